//! Directory throughput: 1,000 users added to a local slapd (`dbnosync`) by a plain ldap3
//! client keeping 32 adds in flight on one connection, against `Directory::create_user`
//! called from 32 concurrent tasks. Prints both rates and their ratio (the target is at
//! least 0.8).
//!
//! `cargo bench --bench directory` (needs `slapd` and `slapadd`: apt-get install slapd).

use std::sync::Arc;
use std::time::Instant;

use tripline::directory::{Directory, DirectoryConfig, NewUser};

#[path = "common/slapd.rs"]
mod slapd;

use slapd::{add_ou, raw_rate, start_slapd, BASE, IN_FLIGHT, USERS};

const ROUNDS: usize = 3;

/// Creates `USERS` users under `ou` with `Directory::create_user` from `IN_FLIGHT` tasks.
async fn tripline_rate(dir: Arc<Directory>, ou: &str) -> f64 {
    dir.connect().await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let (dir, ou) = (dir.clone(), ou.to_string());
            tokio::spawn(async move {
                for i in (t..USERS).step_by(IN_FLIGHT) {
                    let user = NewUser {
                        name: format!("Tripline User {i}"),
                        login: format!("tl{i}"),
                        ou: Some(ou.clone()),
                        attributes: [
                            ("sn".to_string(), vec!["User".to_string()]),
                            ("givenName".into(), vec!["Tl".into()]),
                        ]
                        .into(),
                        ..Default::default()
                    };
                    dir.create_user(&user).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    USERS as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let slapd = start_slapd();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let text = format!(
            "kind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"cn=admin,{BASE}\"\nbind_password = \"secret\"\nbase_dn = \"{BASE}\"\n\
             allow_plaintext_bind = true\n",
            slapd.url
        );
        let cfg: DirectoryConfig = toml::from_str(&text).unwrap();
        let dir = Arc::new(Directory::new("bench", &cfg).unwrap());
        let (mut best_raw, mut best_tl) = (0f64, 0f64);
        for round in 0..ROUNDS {
            let raw_ou = add_ou(&slapd.url, &format!("raw{round}")).await;
            let tl_ou = add_ou(&slapd.url, &format!("tl{round}")).await;
            let raw = raw_rate(&slapd.url, &raw_ou, &format!("r{round}")).await;
            let tl = tripline_rate(dir.clone(), &tl_ou).await;
            println!("round {round}: ldap3 {raw:>7.0} adds/s   tripline {tl:>7.0} adds/s   ratio {:.2}", tl / raw);
            best_raw = best_raw.max(raw);
            best_tl = best_tl.max(tl);
        }
        println!(
            "best of {ROUNDS}: ldap3 ({IN_FLIGHT} in flight) {best_raw:.0} adds/s, tripline create_user ({IN_FLIGHT} tasks) \
             {best_tl:.0} adds/s, ratio {:.2} (target >= 0.80); connections opened: {}",
            best_tl / best_raw,
            dir.connections_opened()
        );
    });
}
