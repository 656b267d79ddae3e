//! Path expressions, compiled the same way by the compiler (to validate)
//! and by the dataplane (to match).

/// Longest route path accepted; request paths are bounded by the dataplane too.
pub const MAX_PATH_LEN: usize = 1024;
/// Most memory a compiled path expression may take (the `regex` crate's
/// size limit), so one route cannot make every dataplane build a huge
/// automaton.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Compiles a `RegularExpression` path: anchored at both ends, matched
/// against the decoded path's bytes, within a size limit. The compiler
/// validates with it and the dataplane matches with it, so both agree on
/// what an expression means.
pub fn path_regex(value: &str) -> Result<regex::bytes::Regex, &'static str> {
    bounded_regex(value, &format!("^(?:{value})$"))
}

/// Compiles a header or query value pattern: it must match the whole
/// value, within the same limits as [`path_regex`].
pub fn value_regex(value: &str) -> Result<regex::bytes::Regex, &'static str> {
    path_regex(value)
}

/// Compiles the pattern of a regex rewrite: unanchored (it finds a match
/// anywhere in the decoded path, as nginx's `rewrite` does), within the
/// same limits as [`path_regex`].
pub fn rewrite_regex(value: &str) -> Result<regex::bytes::Regex, &'static str> {
    bounded_regex(value, value)
}

fn bounded_regex(value: &str, pattern: &str) -> Result<regex::bytes::Regex, &'static str> {
    if value.is_empty() || value.len() > MAX_PATH_LEN {
        return Err("must be a regular expression of 1 to 1024 characters");
    }
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "is a regular expression too large to compile",
            _ => "is not a valid regular expression",
        })
}
