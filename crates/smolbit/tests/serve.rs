//! `smolbit serve` end to end on the default model, over loopback with a minimal HTTP/1.1
//! client: answers equal `smolbit generate`'s, OpenAI's response and chunk shapes, 4xx errors
//! that leave the server serving, a bounded queue under 32 concurrent streams, a client that
//! leaves mid-stream freeing its slot, and a clean exit on SIGTERM. (`scripts/serve-check.sh`
//! runs the official `openai` Python client against it in CI.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{real_model, smolbit_ok};

/// A running server: its address, its log lines so far, and the process (SIGTERMed on drop).
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smolbit"))
            .args(["--threads", "2", "serve", "--port", "0", "--model"])
            .arg(model)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start smolbit serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("[serve] listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().expect("log").push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock()));
        Server { child, addr, log }
    }

    fn log_contains(&self, what: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(what))
    }

    /// Resident memory of the server process, MiB.
    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    }

    /// SIGTERM, then the exit status (within 60 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < until, "server did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, lower-cased headers, body (de-chunked).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an event stream.
    fn events(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    // A server may answer (413) and close before taking a large body: not an error here.
    let _ = s.write_all(body);
    s
}

fn read_reply(s: TcpStream) -> Reply {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).expect("chunk size");
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    read_reply(send(addr, method, path, headers, body))
}

fn post(addr: &str, path: &str, body: &Value) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn generate_text(model: &Path, args: &[&str]) -> String {
    let model = model.to_str().expect("utf8");
    let mut all = vec!["--threads", "2", "generate", "--model", model];
    all.extend_from_slice(args);
    all.push("--json");
    let out = smolbit_ok(&all);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["text"].as_str().expect("text").to_string()
}

const PROMPT: &str = "Write a Python function that adds two numbers.";

#[test]
fn serve_answers_as_generate_does() {
    let Some(model) = real_model("smollm2-serve") else {
        return;
    };
    let mut server = Server::start(model, &[]);
    let addr = server.addr.clone();
    let id = model
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    let models = request(&addr, "GET", "/v1/models", &[], b"");
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], json!(id));
    assert_eq!(
        request(&addr, "GET", "/health", &[], b"").json()["status"],
        "ok"
    );

    // Greedy chat: the same text as `generate --chat`, whole and streamed.
    let want = generate_text(
        model,
        &["--prompt", PROMPT, "--chat", "--max-new-tokens", "24"],
    );
    let chat = json!({
        "model": id, "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0, "max_tokens": 24,
    });
    let r = post(&addr, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], json!(want));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 24);
    let p = v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert_eq!(v["usage"]["total_tokens"], json!(p + 24));

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(&addr, "/v1/chat/completions", &streamed);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want);
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 24);

    // A raw completion: the same text as `generate` without the chat template; a stop string
    // ends it with finish_reason "stop".
    let want = generate_text(
        model,
        &["--prompt", "def add(a, b):", "--max-new-tokens", "12"],
    );
    let r = post(
        &addr,
        "/v1/completions",
        &json!({"model": id, "prompt": "def add(a, b):", "temperature": 0, "max_tokens": 12}),
    );
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], json!(want));
    // A stop string from the middle of that text: the answer ends before its first occurrence.
    let chars: Vec<char> = want.chars().collect();
    assert!(
        chars.len() >= 4,
        "answer too short to test stop strings: {want:?}"
    );
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = want.find(&stop).expect("stop string in the text");
    let r = post(
        &addr,
        "/v1/completions",
        &json!({"model": id, "prompt": "def add(a, b):", "temperature": 0,
                "max_tokens": 12, "stop": [stop]}),
    );
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["text"], json!(want[..cut]));
    assert!(server.log_contains("ttft"), "no timing in the log");
    assert!(server.terminate().success(), "exit status after SIGTERM");
}

#[test]
fn serve_rejects_bad_requests_and_keeps_serving() {
    let Some(model) = real_model("smollm2-serve") else {
        return;
    };
    let server = Server::start(model, &["--api-key", "sekrit"]);
    let addr = server.addr.clone();
    let id = model
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let auth = ("Authorization", "Bearer sekrit");
    let json_ct = ("Content-Type", "application/json");
    let call = |body: &[u8]| {
        request(
            &addr,
            "POST",
            "/v1/chat/completions",
            &[auth, json_ct],
            body,
        )
    };
    let expect = |r: Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["error"]["code"], json!(code), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    };
    let ok_body = json!({"model": id, "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 2, "temperature": 0});
    // No key, a wrong key.
    expect(
        request(&addr, "GET", "/v1/models", &[], b""),
        401,
        "invalid_api_key",
    );
    expect(
        request(
            &addr,
            "POST",
            "/v1/chat/completions",
            &[("Authorization", "Bearer nope"), json_ct],
            ok_body.to_string().as_bytes(),
        ),
        401,
        "invalid_api_key",
    );
    expect(call(b"{\"model\": "), 400, "invalid_json");
    let with = |k: &str, v: Value| {
        let mut b = ok_body.clone();
        b[k] = v;
        b.to_string().into_bytes()
    };
    expect(call(&with("model", json!("gpt-9"))), 404, "model_not_found");
    expect(call(&with("n", json!(3))), 400, "invalid_n");
    expect(
        call(&with("max_tokens", json!(-5))),
        400,
        "invalid_max_tokens",
    );
    expect(
        call(&with("temperature", json!(7))),
        400,
        "invalid_temperature",
    );
    expect(call(&with("messages", json!([]))), 400, "invalid_messages");
    // 100 MB body: refused by size.
    let huge = vec![b' '; 100 << 20];
    expect(call(&huge), 413, "request_too_large");
    // A prompt longer than the context (8192 tokens).
    let long = "word ".repeat(9000);
    expect(
        call(&with(
            "messages",
            json!([{"role": "user", "content": long}]),
        )),
        400,
        "context_length_exceeded",
    );
    expect(
        request(&addr, "GET", "/v2/nothing", &[auth], b""),
        404,
        "not_found",
    );
    // Still serving.
    let r = call(ok_body.to_string().as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
}

#[test]
fn serve_bounds_its_queue_and_frees_slots_of_clients_that_leave() {
    let Some(model) = real_model("smollm2-serve") else {
        return;
    };
    let server = Server::start(model, &["--parallel", "4", "--queue", "8"]);
    let addr = server.addr.clone();
    let id = model
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let rss_before = server.rss_mib();

    // A client that leaves after its first chunk: its generation stops.
    let long = json!({"model": id, "messages": [{"role": "user", "content": PROMPT}],
                      "max_tokens": 4000, "temperature": 0, "stream": true});
    let s = send(
        &addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        long.to_string().as_bytes(),
    );
    let mut first = [0u8; 64];
    let n = (&s).read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);

    // 32 concurrent streamed requests: each completes or gets a 503, none hangs; /health
    // answers meanwhile.
    let started = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let (addr, id) = (addr.clone(), id.clone());
            std::thread::spawn(move || {
                let body = json!({"model": id, "stream": true, "max_tokens": 8, "temperature": 0,
                                  "messages": [{"role": "user", "content": format!("Count to {i}.")}]});
                post(&addr, "/v1/chat/completions", &body)
            })
        })
        .collect();
    let health = request(&addr, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    let (mut done, mut busy) = (0, 0);
    for c in clients {
        let r = c.join().expect("client thread");
        match r.status {
            200 => {
                assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
                done += 1;
            }
            503 => {
                assert_eq!(r.json()["error"]["code"], "server_busy");
                busy += 1;
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(done + busy, 32);
    assert!(done >= 8, "only {done} of 32 served (parallel 4, queue 8)");
    eprintln!(
        "32 concurrent: {done} served, {busy} busy, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The client that left was cancelled, not run to 4000 tokens.
    assert!(
        server.log_contains("client gone"),
        "{:?}",
        server.log.lock()
    );
    let rss_after = server.rss_mib();
    eprintln!("server RSS: {rss_before} MiB before, {rss_after} MiB after");
    assert!(
        rss_after < rss_before + 512,
        "RSS grew from {rss_before} to {rss_after} MiB"
    );
    // Slots are free again.
    let r = post(
        &addr,
        "/v1/chat/completions",
        &json!({"model": id, "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200);
}
