//! Passwords: argon2id hashing and verification on a fixed pool of threads, so that however many logins
//! arrive at once, the memory argon2 takes (about 19 MiB a call) stays bounded.

use std::sync::Arc;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::oneshot;

use crate::error::{ApiError, ApiResult};

/// Hashes a password with argon2id on the blocking pool: a hash takes tens of milliseconds of CPU and about
/// 19 MiB of memory. The server goes through [`Passwords`], which bounds how many run at once; this is for the
/// command line.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_now(&password)).await?
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| anyhow::anyhow!("hashing a password: {error}"))
}

/// Checks a password against a stored hash. With no hash (unknown user) it still spends the time of one
/// verification, so response times do not reveal which e-mail addresses exist.
fn verify_now(password: &str, hash: Option<&str>) -> bool {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let decoy = DECOY.get_or_init(|| hash_now("decoy password").unwrap_or_default());
    Argon2::default().verify_password(password.as_bytes(), hash.unwrap_or(decoy)).is_ok() && hash.is_some()
}

/// Password hashing and verification for requests, bounded: each argon2 call holds about 19 MiB, so without a
/// bound a burst of logins costs memory in proportion to the burst (300 parallel logins took 2.8 GB in the
/// review, 5.7 GB in our test). A fixed set of `concurrency` threads does the work, and a few times that many
/// requests may wait; past that a request is refused at once with 429 and `Retry-After`, before it costs
/// anything.
pub struct Passwords {
    jobs: std::sync::mpsc::SyncSender<PasswordJob>,
}

enum PasswordJob {
    Hash { password: String, done: oneshot::Sender<anyhow::Result<String>> },
    Verify { password: String, hash: Option<String>, done: oneshot::Sender<bool> },
}

/// glibc raises its mmap threshold each time a large block is freed, up to 32 MiB; argon2's 19 MiB blocks then
/// come from the heap, and heap fragmentation keeps about ten of them resident (measured: +155 MiB after a few
/// logins, constant thereafter). A fixed threshold maps and unmaps each large block, so a verification's memory
/// is returned as soon as it ends and the bound on hashing threads is the bound on memory.
fn return_large_allocations_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands the heap's free memory back to the operating system. A password check leaves its thread's arena with
/// free blocks below argon2's mapped one (its parameters, its result, the decoy) that glibc keeps until a trim;
/// start-up leaves the same behind building the API document and the router. Trimming costs well under a
/// millisecond against a check's tens, and it makes the resident size after a login the size before it.
pub(crate) fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Requests allowed to wait for a hashing thread, per thread.
const WAITING_PER_THREAD: usize = 4;

impl Passwords {
    pub fn new(concurrency: usize) -> anyhow::Result<Passwords> {
        let concurrency = concurrency.max(1);
        return_large_allocations_at_once();
        let (jobs, queue) = std::sync::mpsc::sync_channel::<PasswordJob>(concurrency * WAITING_PER_THREAD);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for index in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("password-{index}")).spawn(move || {
                // Ends when the server drops its `Passwords`, which closes the queue.
                loop {
                    let job = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                    match job {
                        Ok(PasswordJob::Hash { password, done }) => {
                            let _ = done.send(hash_now(&password));
                        }
                        Ok(PasswordJob::Verify { password, hash, done }) => {
                            let _ = done.send(verify_now(&password, hash.as_deref()));
                        }
                        Err(_) => return,
                    }
                    return_free_memory();
                }
            })?;
        }
        Ok(Passwords { jobs })
    }

    pub async fn hash(&self, password: String) -> ApiResult<String> {
        let (done, result) = oneshot::channel();
        self.submit(PasswordJob::Hash { password, done })?;
        Ok(result.await.map_err(anyhow::Error::from)??)
    }

    /// Whether `password` matches `hash`; with no hash it spends the same effort and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> ApiResult<bool> {
        let (done, result) = oneshot::channel();
        self.submit(PasswordJob::Verify { password, hash, done })?;
        Ok(result.await.map_err(anyhow::Error::from)?)
    }

    fn submit(&self, job: PasswordJob) -> ApiResult<()> {
        self.jobs.try_send(job).map_err(|error| match error {
            std::sync::mpsc::TrySendError::Full(_) => ApiError::TooManyRequests {
                detail: "the server is busy checking other passwords; try again shortly".into(),
                retry_after_seconds: 1,
            },
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                ApiError::Internal(anyhow::anyhow!("the password threads have stopped"))
            }
        })
    }
}
