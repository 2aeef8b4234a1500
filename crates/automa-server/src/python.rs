//! Checks a script's syntax by compiling it — never executing it — in the configured interpreter, so the
//! check matches the Python that will run the script. `compile()` turns source into bytecode without running
//! any of it; the process gets no environment, no site packages and a time limit.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, process::Command, sync::Semaphore};

const CHECK_PROGRAM: &str = r#"
import json, sys
source = sys.stdin.buffer.read()
try:
    compile(source, sys.argv[1], "exec", dont_inherit=True)
except SyntaxError as error:
    print(json.dumps({"line": error.lineno, "column": error.offset, "message": error.msg}))
    sys.exit(1)
except (ValueError, MemoryError, RecursionError) as error:
    print(json.dumps({"line": None, "column": None, "message": str(error) or type(error).__name__}))
    sys.exit(1)
"#;

/// Where and why a script does not compile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyntaxProblem {
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no Python interpreter is configured on this server")]
    NoInterpreter,
    #[error("the syntax check did not finish: {0}")]
    Failed(String),
}

pub struct SyntaxChecker {
    interpreter: Option<PathBuf>,
    /// Compiling is CPU-bound; a burst of uploads must not start a process each at once.
    slots: Semaphore,
}

impl SyntaxChecker {
    pub fn new(interpreter: Option<PathBuf>) -> Self {
        SyntaxChecker { interpreter, slots: Semaphore::new(2) }
    }

    pub fn is_available(&self) -> bool {
        self.interpreter.is_some()
    }

    /// `Ok(None)` when the script compiles.
    pub async fn check(&self, filename: &str, source: &str) -> Result<Option<SyntaxProblem>, CheckError> {
        let interpreter = self.interpreter.as_ref().ok_or(CheckError::NoInterpreter)?;
        let _slot = self.slots.acquire().await.map_err(|e| CheckError::Failed(e.to_string()))?;
        let mut child = Command::new(interpreter)
            .args(["-I", "-S", "-c", CHECK_PROGRAM, filename])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CheckError::Failed(format!("cannot start {}: {e}", interpreter.display())))?;
        let mut stdin = child.stdin.take().ok_or_else(|| CheckError::Failed("no stdin".into()))?;
        let source = source.as_bytes().to_vec();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&source).await;
        });
        let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .map_err(|_| CheckError::Failed("timed out".into()))?
            .map_err(|e| CheckError::Failed(e.to_string()))?;
        let _ = writer.await;
        if output.status.success() {
            return Ok(None);
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|_| CheckError::Failed(format!("the interpreter exited with {}", output.status)))
    }
}
