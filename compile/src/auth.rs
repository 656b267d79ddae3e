//! HTTP Basic authentication: the users of a route's Secret, checked here
//! so a broken Secret is reported in the route's status and a route that
//! asks for authentication is never served without it.

use k8s_openapi::api::core::v1::Secret;
use pier_snapshot::{BasicAuth, Invalid, User};

use super::tls::Secrets;

/// The realm when the route names none (nginx's usual text).
pub(crate) const REALM: &str = "Authentication Required";

/// Most users one route takes: each is checked by a linear scan.
pub(crate) const MAX_USERS: usize = 1024;

/// The route's users from Secret `namespace/spec.secretName`, or why the
/// route cannot be served.
pub(crate) fn basic(
    spec: Option<&pier_crds::BasicAuth>,
    namespace: &str,
    secrets: &Secrets<'_>,
) -> Result<Option<BasicAuth>, Invalid> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let full = format!("{namespace}/{}", spec.secret_name);
    let invalid = |why: String| Invalid::Auth {
        secret: full.clone(),
        why,
    };
    let realm = spec.realm.as_deref().unwrap_or(REALM);
    if realm.is_empty()
        || realm
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
    {
        return Err(invalid("has a realm that cannot be quoted".to_owned()));
    }
    let secret = secrets
        .get(namespace, &spec.secret_name)
        .ok_or_else(|| invalid("is not found".to_owned()))?;
    let users = users(secret).map_err(invalid)?;
    if users.is_empty() {
        return Err(invalid("holds no user".to_owned()));
    }
    if users.len() > MAX_USERS {
        return Err(invalid(format!("holds more than {MAX_USERS} users")));
    }
    Ok(Some(BasicAuth {
        realm: realm.to_owned(),
        users,
    }))
}

/// The Secret's users: the htpasswd lines of its `auth` key, else one per
/// key (ingress-nginx's `auth-file` and `auth-map`). Messages name users
/// and lines, never hashes.
fn users(secret: &Secret) -> Result<Vec<User>, String> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(data) = &secret.data {
        entries.extend(data.iter().map(|(k, v)| (k.clone(), v.0.clone())));
    }
    if let Some(data) = &secret.string_data {
        entries.extend(
            data.iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        );
    }
    let mut users = Vec::new();
    if let Some((_, file)) = entries.iter().find(|(k, _)| k == "auth") {
        let file = std::str::from_utf8(file).map_err(|_| "auth is not text".to_owned())?;
        for (n, line) in file.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("auth line {} is not user:hash", n + 1))?;
            users.push(user(name, hash)?);
        }
    } else {
        for (name, hash) in &entries {
            let hash = std::str::from_utf8(hash)
                .map_err(|_| format!("the hash of user {name} is not text"))?;
            users.push(user(name, hash.trim())?);
        }
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = users.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(format!("names user {} twice", pair[0].name));
    }
    Ok(users)
}

/// One user, its hash in a format the dataplane verifies.
fn user(name: &str, hash: &str) -> Result<User, String> {
    if name.is_empty() || name.contains(':') || name.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("user {name:?} is not a valid user name"));
    }
    if !supported(hash) {
        return Err(format!(
            "user {name}: the hash is not bcrypt ($2y$, htpasswd -B), Apache MD5 ($apr1$) or SHA-1 ({{SHA}})"
        ));
    }
    Ok(User {
        name: name.to_owned(),
        hash: hash.to_owned(),
    })
}

/// Whether the dataplane can verify `hash`: its shape, not its worth.
fn supported(hash: &str) -> bool {
    let b64 = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    };
    if let Some(rest) = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        // `$2y$10$` then 22 characters of salt and 31 of hash.
        return rest.split_once('$').is_some_and(|(cost, rest)| {
            cost.parse::<u32>().is_ok_and(|c| (4..=31).contains(&c)) && b64(rest, 53)
        });
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        return rest.split_once('$').is_some_and(|(salt, digest)| {
            (1..=8).contains(&salt.len()) && !salt.contains('$') && b64(digest, 22)
        });
    }
    if let Some(rest) = hash.strip_prefix("{SHA}") {
        return rest.len() == 28
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    }
    false
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    const ALICE: &str = "$2y$05$zFZLl/LUbKpPWxd3/Vwbv.S6Yd/JV6j8QLlvKB9l016BkABUpcjx6";
    const BOB: &str = "$apr1$cNOAwpSu$MtBlYKfXHmZtzh7a7jGe1.";
    const CAROL: &str = "{SHA}XyRLaTIb/WCdo8CuWc58gPVHl68=";

    fn secret(data: &[(&str, &str)]) -> Arc<Secret> {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Arc::new(Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("users".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            string_data: Some(data),
            ..Default::default()
        })
    }

    fn spec(realm: Option<&str>) -> pier_crds::BasicAuth {
        pier_crds::BasicAuth {
            secret_name: "users".into(),
            realm: realm.map(str::to_owned),
        }
    }

    fn compile(data: &[(&str, &str)]) -> Result<Option<BasicAuth>, Invalid> {
        let all = [secret(data)];
        basic(Some(&spec(None)), "app", &Secrets::index(&all))
    }

    #[test]
    fn htpasswd_files_and_user_maps_give_the_same_users() {
        let file = format!("# team\nbob:{BOB}\n\nalice:{ALICE}\ncarol:{CAROL}\n");
        let from_file = compile(&[("auth", &file)]).expect("valid").expect("users");
        let from_map = compile(&[("carol", CAROL), ("alice", ALICE), ("bob", BOB)])
            .expect("valid")
            .expect("users");
        assert_eq!(from_file, from_map);
        assert_eq!(from_file.realm, REALM);
        let names: Vec<&str> = from_file.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
    }

    #[test]
    fn a_secret_that_cannot_authenticate_refuses_the_route() {
        let all = [secret(&[("auth", &format!("bob:{BOB}"))])];
        let secrets = Secrets::index(&all);
        assert!(basic(None, "app", &secrets).is_ok_and(|a| a.is_none()));
        let refused = |spec: &pier_crds::BasicAuth, ns: &str| {
            let err = basic(Some(spec), ns, &secrets).expect_err("refused");
            assert_eq!(err.reason(), "InvalidAuth");
            err.to_string()
        };
        assert!(refused(&spec(None), "other").contains("not found"));
        assert!(refused(&spec(Some("a\"b")), "app").contains("realm"));
        for (data, says) in [
            ("bob", "not user:hash"),
            ("bob:plain", "user bob: the hash is not bcrypt"),
            ("bob:$1$abc$def", "user bob"),
            ("bob:$apr1$toolongsalt$MtBlYKfXHmZtzh7a7jGe1.", "user bob"),
            ("# nobody", "holds no user"),
            (&format!("bob:{BOB}\nbob:{CAROL}"), "twice"),
        ] {
            let err = compile(&[("auth", data)]).expect_err("refused").to_string();
            assert!(err.contains(says), "{data}: {err}");
            assert!(!err.contains("MtBl"), "no hash in messages: {err}");
        }
    }

    /// The same Secret protects a StaticRoute, a ProxyRoute and an
    /// Ingress with ingress-nginx's annotations; a missing Secret refuses
    /// the route (never served open), and the others stay.
    #[test]
    fn every_route_kind_takes_basic_auth() {
        let users = Arc::new({
            let mut s = (*secret(&[("auth", &format!("bob:{BOB}"))])).clone();
            s.metadata.namespace = Some("default".into());
            s
        });
        let doc = |kind: &str, spec: &str| {
            format!(
                "apiVersion: pier.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: r, namespace: default}}\nspec: {spec}\n"
            )
        };
        let auth = "basicAuth: {secretName: users, realm: Staff}";
        let static_route = serde_saphyr::from_str(&doc(
            "StaticRoute",
            &format!("{{hosts: [s.test], root: /srv, {auth}}}"),
        ))
        .expect("a StaticRoute");
        let proxy_route = serde_saphyr::from_str(&doc(
            "ProxyRoute",
            &format!("{{hosts: [p.test], backends: [{{address: \"127.0.0.1:80\"}}], {auth}}}"),
        ))
        .expect("a ProxyRoute");
        let ingress = |name: &str,
                       secret: &str|
         -> Arc<k8s_openapi::api::networking::v1::Ingress> {
            Arc::new(
                serde_saphyr::from_str(&format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default, annotations: {{nginx.ingress.kubernetes.io/auth-type: basic, nginx.ingress.kubernetes.io/auth-secret: {secret}, nginx.ingress.kubernetes.io/auth-realm: Staff}}}}\nspec: {{defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}, rules: [{{host: {name}.test}}]}}\n"
                ))
                .expect("an Ingress"),
            )
        };
        let out = crate::compile(&crate::Resources {
            static_routes: vec![Arc::new(static_route)],
            proxy_routes: vec![Arc::new(proxy_route)],
            ingresses: vec![ingress("i", "default/users"), ingress("lost", "nobody")],
            secrets: vec![users],
            ..crate::Resources::default()
        });
        let protected: Vec<&BasicAuth> = out
            .snapshot
            .routes
            .iter()
            .map(|r| r.policy.basic_auth.as_ref().expect("every route has it"))
            .collect();
        assert_eq!(protected.len(), 3, "{:?}", out.errors);
        assert!(
            protected
                .iter()
                .all(|a| a.realm == "Staff" && a.users[0].name == "bob")
        );
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert_eq!(out.errors[0].key.name, "lost");
        assert_eq!(out.errors[0].invalid.reason(), "InvalidAuth");
    }
}
