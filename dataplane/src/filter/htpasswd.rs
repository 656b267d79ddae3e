//! Password hashes as htpasswd writes them, verified: bcrypt (`$2y$`,
//! `$2b$`, `$2a$`), Apache MD5 (`$apr1$`, 1000 rounds of MD5) and SHA-1
//! (`{SHA}`, unsalted: accepted because users have such files, not
//! recommended). Pure; the compiler checked the shapes.

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;

/// A parsed hash.
#[derive(Debug)]
pub(super) enum Hash {
    Bcrypt(Box<str>),
    Apr1 { salt: Box<[u8]>, digest: Box<[u8]> },
    Sha1([u8; 20]),
}

impl Hash {
    /// `None` for a format the dataplane does not verify (that user can
    /// never sign in).
    pub(super) fn parse(hash: &str) -> Option<Self> {
        if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            return Some(Self::Bcrypt(hash.into()));
        }
        if let Some(rest) = hash.strip_prefix("$apr1$") {
            let (salt, digest) = rest.split_once('$')?;
            return Some(Self::Apr1 {
                salt: salt.as_bytes().into(),
                digest: digest.as_bytes().into(),
            });
        }
        let sha = base64::engine::general_purpose::STANDARD
            .decode(hash.strip_prefix("{SHA}")?)
            .ok()?;
        Some(Self::Sha1(sha.try_into().ok()?))
    }

    /// Whether `password` is the one hashed.
    pub(super) fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Self::Apr1 { salt, digest } => same(&apr1(password, salt), digest),
            Self::Sha1(digest) => same(&Sha1::digest(password), digest),
        }
    }
}

/// Compares without an early exit, so the time says nothing of where two
/// values differ.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt with the `$apr1$` magic: the digest part of the
/// hash (22 characters of crypt's base 64).
fn apr1(password: &[u8], salt: &[u8]) -> Vec<u8> {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(MAGIC)
        .chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alternate[..chunk.len()]);
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut sum = ctx.finalize();
    for round in 0..1000 {
        let mut ctx = Md5::new();
        if round & 1 == 1 {
            ctx.update(password);
        } else {
            ctx.update(sum);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        if round & 1 == 1 {
            ctx.update(sum);
        } else {
            ctx.update(password);
        }
        sum = ctx.finalize();
    }
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(22);
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ALPHABET[(v & 0x3f) as usize]);
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(sum[i]);
    for (x, y, z) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((b(x) << 16) | (b(y) << 8) | b(z), 4);
    }
    put(b(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `htpasswd -nbB -C 5`, `-nbm`, `-nbs` and
    /// `openssl passwd -apr1`.
    #[test]
    fn hashes_written_by_htpasswd_and_openssl_verify() {
        let cases = [
            (
                "$2y$05$zFZLl/LUbKpPWxd3/Vwbv.S6Yd/JV6j8QLlvKB9l016BkABUpcjx6",
                "s3cret!",
            ),
            ("$apr1$cNOAwpSu$MtBlYKfXHmZtzh7a7jGe1.", "hunter2"),
            ("$apr1$USUTFbBV$vPoe2nmDwE79X0DSm4nzf1", ""),
            (
                "$apr1$abcdefgh$Eqv4oIyMsS.tjfvQCJYY1/",
                "a much longer password than sixteen bytes",
            ),
            ("{SHA}XyRLaTIb/WCdo8CuWc58gPVHl68=", "pa:ss"),
        ];
        for (hash, password) in cases {
            let parsed = Hash::parse(hash).expect(hash);
            assert!(parsed.verify(password.as_bytes()), "{hash}");
            assert!(!parsed.verify(b"wrong"), "{hash}");
            let mut longer = password.as_bytes().to_vec();
            longer.push(b'x');
            assert!(!parsed.verify(&longer), "{hash}");
        }
    }

    #[test]
    fn unknown_formats_parse_to_nothing() {
        for hash in [
            "plain",
            "$1$abc$def",
            "{SHA}short",
            "{SSHA}abc",
            "$apr1$nodigest",
        ] {
            assert!(Hash::parse(hash).is_none(), "{hash}");
        }
    }

    #[test]
    fn same_compares_whole_values() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"ab") && !same(b"", b"a"));
    }
}
