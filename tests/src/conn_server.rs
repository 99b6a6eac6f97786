//! The accept loop shared by the harness's hand-written HTTP stand-ins (the
//! Cloudflare API, the ARI proxy): one thread per connection, and a clean
//! stop when the owner drops it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::HarnessError;

/// A listener whose connections are each handed to `handler` on a thread of
/// their own. Stopped (and its accept thread joined) on drop.
#[derive(Debug)]
pub(crate) struct ConnServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ConnServer {
    /// Serves `listener`; `name` names the threads (and the error).
    pub(crate) fn spawn(
        listener: TcpListener,
        name: &str,
        handler: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Result<ConnServer, HarnessError> {
        let addr = listener.local_addr().map_err(|source| HarnessError::Io {
            context: format!("reading the {name}'s address"),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let (thread_name, flag) = (format!("{name}-conn"), Arc::clone(&stop));
        let accept = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = conn else {
                        // Out of file descriptors, say: do not spin.
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let handler = Arc::clone(&handler);
                    let _ = thread::Builder::new()
                        .name(thread_name.clone())
                        .spawn(move || handler(stream));
                }
            })
            .map_err(|source| HarnessError::Io {
                context: format!("starting the {name}'s thread"),
                source,
            })?;
        Ok(ConnServer {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
