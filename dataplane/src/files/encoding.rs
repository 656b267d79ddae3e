//! `Accept-Encoding` negotiation for precompressed siblings.

use super::range::trim;

/// A content coding Pier can serve from a precompressed sibling file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    /// `FILE.br`, `Content-Encoding: br`.
    Brotli,
    /// `FILE.gz`, `Content-Encoding: gzip`.
    Gzip,
}

impl Coding {
    /// File name suffix of the sibling.
    pub(crate) fn suffix(self) -> &'static [u8] {
        match self {
            Self::Brotli => b".br",
            Self::Gzip => b".gz",
        }
    }

    /// `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Self::Brotli => "br",
            Self::Gzip => "gzip",
        }
    }
}

/// The codings the client accepts, best first (higher q, then brotli before
/// gzip). An empty result means identity only.
pub(crate) fn preferred(accept_encoding: &[u8]) -> impl Iterator<Item = Coding> {
    let (mut br, mut gzip, mut star) = (None, None, None);
    for element in accept_encoding.split(|&b| b == b',') {
        let mut parts = element.split(|&b| b == b';');
        let coding = trim(parts.next().unwrap_or_default());
        let q = parts
            .filter_map(|p| {
                let p = trim(p);
                let value = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q="))?;
                Some(qvalue(value))
            })
            .next()
            .unwrap_or(1000);
        let slot = if coding.eq_ignore_ascii_case(b"br") {
            &mut br
        } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            &mut gzip
        } else if coding == b"*" {
            &mut star
        } else {
            continue;
        };
        *slot = Some(q);
    }
    let br = br.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    let mut order = [(br, Coding::Brotli), (gzip, Coding::Gzip)];
    if gzip > br {
        order.swap(0, 1);
    }
    order.into_iter().filter(|(q, _)| *q > 0).map(|(_, c)| c)
}

/// A qvalue in thousandths; malformed values count as 0 (not acceptable).
fn qvalue(value: &[u8]) -> u16 {
    let s = std::str::from_utf8(value).unwrap_or("");
    match s.parse::<f32>() {
        Ok(q) if (0.0..=1.0).contains(&q) => (q * 1000.0).round() as u16,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pref(header: &str) -> Vec<Coding> {
        preferred(header.as_bytes()).collect()
    }

    #[test]
    fn brotli_is_preferred_on_ties() {
        assert_eq!(
            pref("gzip, deflate, br"),
            vec![Coding::Brotli, Coding::Gzip]
        );
    }

    #[test]
    fn q_values_order_and_exclude() {
        assert_eq!(
            pref("br;q=0.5, gzip;q=0.8"),
            vec![Coding::Gzip, Coding::Brotli]
        );
        assert_eq!(pref("br;q=0, gzip"), vec![Coding::Gzip]);
        assert_eq!(pref("*;q=0.1, gzip;q=0"), vec![Coding::Brotli]);
        assert_eq!(pref("identity"), vec![]);
        assert_eq!(pref(""), vec![]);
        assert_eq!(pref("gzip;q=nope"), vec![]);
    }
}
