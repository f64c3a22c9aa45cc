//! The platform behind PgBouncer in transaction mode, as a deployment that pools its
//! connections runs it: the fleet's load (signups, fix reports, paid invoices) through
//! two API processes and four workers, one of each killed mid-load, every process on
//! PgBouncer and its `LISTEN` and migrations on `DATABASE_DIRECT_URL`. The workers use a
//! database entry of their own, whose sessions carry the jobs' `statement_timeout`.

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
             {database}_jobs = host={host} port={server_port} dbname={database} \
             connect_query='SET statement_timeout = 60000'\n\
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

    /// A counter of the admin console's `SHOW STATS`, summed over the database's entries
    /// (the API's and the workers').
    async fn stat(&self, database: &str, column: &str) -> i64 {
        let mut admin = connect(&self.url("pgbouncer")).await.expect("the admin console answers");
        let rows = sqlx::raw_sql("SHOW STATS").fetch_all(&mut admin).await.unwrap();
        // The console answers in text.
        let text = |row: &PgRow, column: &str| row.try_get_unchecked::<String, _>(column).unwrap_or_default();
        rows.iter()
            .filter(|row| text(row, "database").starts_with(database))
            .map(|row| text(row, column).parse::<i64>().unwrap())
            .sum()
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

#[tokio::test]
async fn the_fleet_loses_nothing_behind_pgbouncer_in_transaction_mode() {
    let db = TestDb::fresh().await;
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    let bouncer = PgBouncer::start(&database).await;
    let (api_url, worker_url) = (bouncer.url(&database), bouncer.url(&format!("{database}_jobs")));

    let survivors = crate::fleet::lose_nothing_when_one_api_and_one_worker_die(
        &db,
        [&api_url, &worker_url],
        &[("DATABASE_DIRECT_URL", db.url.as_str()), ("DATABASE_MAX_CONNECTIONS", "10")],
    )
    .await;

    // The load did pass through PgBouncer, and prepared statements were carried from
    // session to session (bound many times more often than parsed).
    let transactions = bouncer.stat(&database, "total_xact_count").await;
    let parses = bouncer.stat(&database, "total_client_parse_count").await;
    let binds = bouncer.stat(&database, "total_bind_count").await;
    assert!(transactions >= 600, "the load's transactions went through PgBouncer: {transactions}");
    assert!(parses > 0 && binds > 2 * parses, "prepared statements were reused: {parses} parsed, {binds} bound");
    // Each live worker listens on a direct session of its own, not through the pooler.
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'rsolv-listen' AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(listening, 3, "the three live workers listen on direct sessions");
    // No migration lock (a session-level advisory lock) was left held in a pooled session.
    let advisory: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(advisory, 0, "no advisory lock is held");
    // The workers' sessions carry the jobs' statement_timeout (a worker refuses to start
    // behind a pooler without one).
    let mut jobs_session = connect(&worker_url).await.unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut jobs_session).await.unwrap();
    assert_eq!(timeout, "1min");
    drop(survivors);
}

#[tokio::test]
async fn a_worker_behind_pgbouncer_refuses_to_start_when_its_jobs_would_have_no_statement_timeout() {
    let db = TestDb::fresh().await;
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    let bouncer = PgBouncer::start(&database).await;
    // The API's entry: its sessions have no statement_timeout.
    let mut worker = crate::helpers::our_command("rsolv-worker", &bouncer.url(&database));
    worker.env("DATABASE_DIRECT_URL", &db.url).env("METRICS_ADDR", "off");
    let output = tokio::task::spawn_blocking(move || worker.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the worker refused to start");
    assert!(stderr.contains("without a statement_timeout"), "and said why: {stderr}");
}
