//! Holds many TCP connections open at once, for tests that need more flows
//! than one process may have file descriptors (20000 here): run several.
//!
//! ```text
//! netpath-flows serve PORT COUNT SECONDS
//!     accept COUNT connections and echo on each until they close
//! netpath-flows connect ADDR PORT COUNT SECONDS
//!     open COUNT connections, check an echo on each, print "established N";
//!     on each line from stdin check an echo on every one again and print
//!     "verified N"; exit at the end of stdin
//! ```
//! Every mode gives up after SECONDS.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i).with_context(|| format!("missing {what}"))?.parse().map_err(|_| anyhow::anyhow!("bad {what}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let (port, count, secs): (u16, usize, u64) =
                (arg(&args, 2, "PORT")?, arg(&args, 3, "COUNT")?, arg(&args, 4, "SECONDS")?);
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(secs), serve(port, count)).await.context("timed out")?
            })
        }
        Some("connect") => {
            let addr: std::net::Ipv4Addr = arg(&args, 2, "ADDR")?;
            let (port, count, secs): (u16, usize, u64) =
                (arg(&args, 3, "PORT")?, arg(&args, 4, "COUNT")?, arg(&args, 5, "SECONDS")?);
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(secs), connect(SocketAddr::from((addr, port)), count))
                    .await
                    .context("timed out")?
            })
        }
        _ => bail!("usage: netpath-flows serve PORT COUNT SECONDS | connect ADDR PORT COUNT SECONDS"),
    }
}

async fn serve(port: u16, count: usize) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let mut tasks = vec![];
    for _ in 0..count {
        let (mut s, _) = listener.accept().await?;
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn echo(s: &mut TcpStream, byte: u8) -> Result<()> {
    s.write_all(&[byte]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b[0] != byte {
        bail!("echo mismatch");
    }
    Ok(())
}

async fn connect(addr: SocketAddr, count: usize) -> Result<()> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("connection {i} to {addr}"))?;
        echo(&mut s, b'a').await.with_context(|| format!("echo on connection {i}"))?;
        conns.push(s);
    }
    println!("established {}", conns.len());
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    while stdin.read_line(&mut line).await? > 0 {
        for (i, s) in conns.iter_mut().enumerate() {
            echo(s, b'b').await.with_context(|| format!("later echo on connection {i}"))?;
        }
        println!("verified {}", conns.len());
        line.clear();
    }
    Ok(())
}
