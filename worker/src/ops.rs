//! `rsolv-worker jobs …`: the admin API's operations from a shell.

use common::jobs;
use common::queue::JobStatus;
use common::queue::admin::{self, JobFilter};

use crate::Error;
use crate::credits::actor;

const USAGE: &str = "usage: rsolv-worker jobs queues | dead [QUEUE] | show ID | redrive ID | redrive-all QUEUE | discard ID | cancel ID";

fn id(args: &[String]) -> Result<i64, Error> {
    args.get(1).and_then(|a| a.parse().ok()).ok_or_else(|| USAGE.into())
}

pub async fn run(pool: &sqlx::PgPool, args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        Some("queues") => {
            let kinds: Vec<&str> = jobs::kinds().into_iter().map(|(kind, _)| kind).collect();
            println!(
                "{:<24} {:>9} {:>9} {:>7} {:>9} {:>9} {:>6} {:>12}",
                "queue", "available", "scheduled", "running", "retryable", "completed", "dead", "oldest wait"
            );
            for q in admin::overview(pool, &kinds).await? {
                println!(
                    "{:<24} {:>9} {:>9} {:>7} {:>9} {:>9} {:>6} {:>11.1}s",
                    q.queue,
                    q.available,
                    q.scheduled,
                    q.running,
                    q.retryable,
                    q.completed,
                    q.dead,
                    q.oldest_waiting_seconds
                );
            }
        }
        Some("dead") => {
            let filter = JobFilter {
                queue: args.get(1).cloned(),
                status: Some(JobStatus::Dead),
                limit: 200,
                ..Default::default()
            };
            for job in admin::list(pool, &filter).await? {
                println!(
                    "{:>8} {:<24} attempts={:<3} {}",
                    job.id,
                    job.queue,
                    job.attempts,
                    job.last_error.unwrap_or_default()
                );
            }
        }
        Some("show") => {
            let id = id(args)?;
            let job = admin::detail(pool, id).await?.ok_or_else(|| format!("no job {id}"))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        Some("redrive") => {
            let id = id(args)?;
            admin::redrive(pool, id, &actor()).await?;
            println!("job {id} redriven");
        }
        Some("redrive-all") => {
            let queue = args.get(1).ok_or(USAGE)?;
            let redriven = admin::redrive_all(pool, queue, &actor()).await?;
            println!("{redriven} dead jobs of {queue} redriven");
        }
        Some("discard") => {
            let id = id(args)?;
            admin::discard(pool, id, &actor()).await?;
            println!("job {id} discarded");
        }
        Some("cancel") => {
            let id = id(args)?;
            admin::cancel(pool, id, &actor()).await?;
            println!("job {id} cancelled");
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}
