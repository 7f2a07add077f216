//! The sample app over real TCP: its name, the test behaviours, concurrent keep-alive clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};
use weft_agent::serve_sample_app;

const BOUND: Duration = Duration::from_secs(30);

struct App {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), weft_agent::AgentError>>,
}

async fn start(name: &str) -> App {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let name = name.to_string();
    let task = tokio::spawn(async move {
        serve_sample_app(&name, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    App { addr, stop, task }
}

/// One HTTP/1.1 keep-alive connection: requests go one after another on the same socket, so
/// any request after the first proves the server kept the connection open.
struct Conn {
    stream: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Conn {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let io = async {
            self.stream.get_mut().write_all(request.as_bytes()).await?;
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut headers = Vec::new();
            loop {
                line.clear();
                if self.stream.read_line(&mut line).await? == 0 {
                    return Err(std::io::Error::other("connection closed mid-response"));
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((n, v)) = l.split_once(':') {
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        timeout(BOUND, io)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, "").await
    }
}

#[tokio::test]
async fn it_answers_every_request_with_its_name_and_header() {
    let app = start("red").await;
    let mut conn = Conn::open(app.addr).await;
    for path in ["/", "/anything/at/all", "/red?x=1"] {
        let r = conn.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, "red\n");
        assert_eq!(r.header("x-weft-app"), Some("red"));
    }
    let r = conn.send("POST", "/orders", "{\"a\":1}").await;
    assert_eq!((r.status, r.body.as_str()), (200, "red\n"));
    assert_eq!(r.header("x-weft-path"), Some("/orders"));
    let _ = app.stop.send(());
    let _ = timeout(BOUND, app.task).await;
}

#[tokio::test]
async fn status_delay_and_fail_every_behave_as_asked() {
    let app = start("blue").await;
    let mut conn = Conn::open(app.addr).await;

    assert_eq!(conn.get("/status/418").await.status, 418);
    assert_eq!(conn.get("/prefix/status/503").await.status, 503);
    assert_eq!(conn.get("/?status=404").await.status, 404);
    assert_eq!(conn.get("/status/42").await.status, 400);

    let t = Instant::now();
    let r = conn.get("/delay/300").await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    let mut failed = Vec::new();
    for i in 1..=9 {
        if conn.get("/fail-every/3").await.status == 503 {
            failed.push(i);
        }
    }
    assert_eq!(failed, vec![3, 6, 9]);
    let _ = app.stop.send(());
    let _ = timeout(BOUND, app.task).await;
}

#[tokio::test]
async fn concurrent_keep_alive_clients_are_all_served_and_a_slow_request_blocks_no_one() {
    let app = start("green").await;
    let addr = app.addr;
    // A request that sleeps far longer than the others need; it is cut by the shutdown.
    let slow = tokio::spawn(async move {
        let mut conn = Conn::open(addr).await;
        conn.get("/delay/60000").await
    });
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..32 {
        clients.spawn(async move {
            let mut conn = Conn::open(addr).await;
            for i in 0..100 {
                let r = conn.get(&format!("/c/{c}/r/{i}")).await;
                assert_eq!((r.status, r.body.as_str()), (200, "green\n"));
                assert_eq!(r.header("x-weft-app"), Some("green"));
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(
        !slow.is_finished(),
        "the slow request should still be sleeping while 3,200 others were served"
    );
    slow.abort();
    let _ = app.stop.send(());
    let _ = timeout(BOUND, app.task).await;
}

#[tokio::test]
async fn after_shutdown_it_refuses_connections() {
    let app = start("red").await;
    let mut conn = Conn::open(app.addr).await;
    assert_eq!(conn.get("/").await.status, 200);
    let _ = app.stop.send(());
    let result = timeout(BOUND, app.task)
        .await
        .unwrap_or_else(|_| panic!("the app did not stop"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(result.is_ok());
    assert!(TcpStream::connect(app.addr).await.is_err());
}
