//! The platform behind PgBouncer in transaction mode, as a deployment that pools its
//! connections runs it: the fleet's load (signups, fix reports, paid invoices) through
//! two API processes and four workers, one of each killed mid-load, every process on
//! PgBouncer and its `LISTEN` and migrations on `DATABASE_DIRECT_URL`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{ConnectOptions, Row};

use crate::helpers::{TestDb, admin_url, wait_for};

/// Server sessions PgBouncer keeps for the test's database: far fewer than the fleet's
/// processes open (ten each, a worker up to twenty-one), so each transaction may run in
/// another session than the one before it, as under a real pooler's load.
const SERVER_SESSIONS: u32 = 6;

/// A PgBouncer (`TEST_PGBOUNCER`, which scripts/test builds) in front of one database.
struct PgBouncer {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl PgBouncer {
    async fn start(database: &str) -> Self {
        let binary = std::env::var("TEST_PGBOUNCER").expect("TEST_PGBOUNCER is unset: run the tests with scripts/test");
        let server: PgConnectOptions = admin_url().parse().unwrap();
        let dir = std::env::temp_dir().join(format!("rsolv-pgbouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let user = server.get_username();
        let ini = format!(
            "[databases]\n\
             {database} = host={host} port={server_port} dbname={database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             admin_users = {user}\n\
             pool_mode = transaction\n\
             default_pool_size = {SERVER_SESSIONS}\n\
             max_client_conn = 1000\n\
             max_prepared_statements = 200\n",
            host = server.get_host(),
            server_port = server.get_port(),
            users = dir.join("users.txt").display(),
        );
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let mut command = Command::new(binary);
        // PgBouncer refuses to run as root; CI's machines run the tests as root.
        if std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
            command.args(["-u", "nobody"]);
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
        let child = command.arg(dir.join("pgbouncer.ini")).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let bouncer = Self { port, child, dir };
        let url = bouncer.url(database);
        wait_for("PgBouncer to accept connections", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                match connect(&url).await {
                    Ok(mut connection) => sqlx::query("SELECT 1").execute(&mut connection).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        bouncer
    }

    fn url(&self, database: &str) -> String {
        let server: PgConnectOptions = admin_url().parse().unwrap();
        format!("postgres://{}@127.0.0.1:{}/{database}", server.get_username(), self.port)
    }

    /// One row of the admin console's `SHOW STATS`: what passed through for `database`.
    async fn stats(&self, database: &str) -> PgRow {
        let mut admin = connect(&self.url("pgbouncer")).await.expect("the admin console answers");
        let rows = sqlx::raw_sql("SHOW STATS").fetch_all(&mut admin).await.unwrap();
        rows.into_iter()
            .find(|row| row.try_get_unchecked::<String, _>("database").is_ok_and(|name| name == database))
            .expect("stats for the database")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection as our pools make them through a pooler: without `extra_float_digits`,
/// which PgBouncer refuses at startup.
async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    url.parse::<PgConnectOptions>()?.extra_float_digits(None).connect().await
}

/// A counter of `SHOW STATS` (the admin console answers in text).
fn stat(row: &PgRow, column: &str) -> i64 {
    row.try_get_unchecked::<String, _>(column).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_fleet_loses_nothing_behind_pgbouncer_in_transaction_mode() {
    let db = TestDb::fresh().await;
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    // Behind a pooler a session cannot be given a statement_timeout, so the role (here,
    // the test database) carries the jobs' one; the worker reads it back at start.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {database} SET statement_timeout = '60s'")))
        .execute(&db.pool)
        .await
        .unwrap();
    let bouncer = PgBouncer::start(&database).await;
    let pooled = bouncer.url(&database);

    crate::fleet::lose_nothing_when_one_api_and_one_worker_die(
        &db,
        &pooled,
        &[("DATABASE_DIRECT_URL", db.url.as_str()), ("DATABASE_MAX_CONNECTIONS", "10")],
    )
    .await;

    // The load did pass through PgBouncer, and its prepared statements were carried from
    // session to session (parsed once per client, bound many times).
    let stats = bouncer.stats(&database).await;
    let (transactions, parses, binds) =
        (stat(&stats, "total_xact_count"), stat(&stats, "total_client_parse_count"), stat(&stats, "total_bind_count"));
    assert!(transactions >= 600, "every request's transaction went through PgBouncer: {transactions}");
    assert!(parses > 0 && binds > 2 * parses, "prepared statements were reused: {parses} parsed, {binds} bound");
}
