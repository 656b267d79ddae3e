use super::*;

#[test]
fn nginx_sizes_are_powers_of_1024() {
    assert_eq!(nginx_size("8m"), Some(8 << 20));
    assert_eq!(nginx_size("512K"), Some(512 << 10));
    assert_eq!(nginx_size("1g"), Some(1 << 30));
    assert_eq!(nginx_size("4096"), Some(4096));
    assert_eq!(nginx_size("0"), Some(0));
    for bad in ["", "m", "1.5m", "-1", "8mb", "99999999999999999999g"] {
        assert_eq!(nginx_size(bad), None, "{bad:?}");
    }
}

#[test]
fn the_readme_table_says_what_the_code_does() {
    let readme = include_str!("../../../../README.md");
    for (name, support, _) in TABLE {
        let said = match support {
            Supported => "supported",
            Ignored => "not yet: reported, served without",
            Refused => "not yet: the Ingress is refused",
        };
        assert!(
            readme.contains(&format!("| `{name}` | {said} |")),
            "README.md's annotation table has no row `| `{name}` | {said} |`"
        );
    }
}

#[test]
fn every_name_in_the_table_is_listed_once() {
    let mut names: Vec<&str> = TABLE.iter().map(|(n, ..)| *n).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "a name is listed twice");
    assert_eq!(support("configuration-snippet"), Some(Refused));
    assert_eq!(support("anything-snippet"), Some(Refused));
    assert_eq!(support("no-such-thing"), None);
}
