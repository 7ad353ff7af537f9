//! The database fixtures are real servers reachable over TCP with the URLs the testkit hands
//! out: a table written in one session is read back in another.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::process::Command;

use kbatch_testkit::{mysql_url, pg_url, unique_name};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn postgres_url_reaches_a_real_server() {
    let url = pg_url();
    assert!(
        url.starts_with("postgres://kbatch:") && url.contains("@127.0.0.1:"),
        "{url}"
    );
    let table = unique_name("t").replace('-', "_");
    let psql = |sql: &str| {
        run(Command::new("psql").args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]))
    };
    psql(&format!(
        "CREATE TABLE {table} (id bigint primary key, body text)"
    ));
    psql(&format!(
        "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 1000) g"
    ));
    assert_eq!(
        psql(&format!("SELECT count(*), max(body) FROM {table}")).trim(),
        "1000|row 999"
    );
    assert!(psql("SELECT version()").starts_with("PostgreSQL"));
}

#[test]
fn mysql_url_reaches_a_real_mariadb() {
    let url = mysql_url();
    let rest = url.strip_prefix("mysql://").unwrap();
    let (cred, hostdb) = rest.split_once('@').unwrap();
    let (user, pass) = cred.split_once(':').unwrap();
    let (hostport, db) = hostdb.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    assert_eq!(host, "127.0.0.1");
    let table = unique_name("t").replace('-', "_");
    let sql = |q: &str| {
        run(Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h",
                host,
                "-P",
                port,
                "-u",
                user,
                db,
                "-N",
                "-B",
                "-e",
                q,
            ])
            .env("MYSQL_PWD", pass))
    };
    sql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, body TEXT) ENGINE=InnoDB"
    ));
    sql(&format!(
        "INSERT INTO {table} VALUES (1, 'one'), (2, 'two')"
    ));
    assert_eq!(
        sql(&format!("SELECT COUNT(*), MAX(body) FROM {table}")).trim(),
        "2\ttwo"
    );
    assert!(sql("SELECT VERSION()").contains("MariaDB"));
}
