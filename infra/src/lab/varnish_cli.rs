//! The Varnish CLI protocol (`varnishd -T` with `-S`): used by `lab up` to reload the VCL
//! on every instance when the files change, and by the lab tests.
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

pub struct Cli {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Cli {
    /// Connects and answers the challenge: sha256(challenge "\n" secret challenge "\n").
    pub fn connect(addr: &str, secret_file: &Path) -> Result<Self> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut cli = Cli {
            r: BufReader::new(s.try_clone().context("cloning socket")?),
            w: s,
        };
        let (code, body) = cli.reply()?;
        if code == 107 {
            let challenge = body.lines().next().unwrap_or("").to_owned();
            let secret = std::fs::read(secret_file)
                .with_context(|| format!("reading {}", secret_file.display()))?;
            let mut h = Sha256::new();
            h.update(challenge.as_bytes());
            h.update(b"\n");
            h.update(&secret);
            h.update(challenge.as_bytes());
            h.update(b"\n");
            let (code, body) = cli.call(&format!("auth {}", hex::encode(h.finalize())))?;
            if code != 200 {
                bail!("varnish at {addr} refused the secret: {code} {body}");
            }
        } else if code != 200 {
            bail!("varnish at {addr} greeted with {code} {body}");
        }
        Ok(cli)
    }

    fn reply(&mut self) -> Result<(u32, String)> {
        let mut head = String::new();
        self.r
            .read_line(&mut head)
            .context("reading a CLI status line")?;
        let mut it = head.split_whitespace();
        let code: u32 = it
            .next()
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad CLI status line {head:?}"))?;
        let len: usize = it
            .next()
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad CLI status line {head:?}"))?;
        let mut body = vec![0u8; len + 1];
        self.r.read_exact(&mut body).context("reading a CLI body")?;
        Ok((code, String::from_utf8_lossy(&body).trim_end().to_owned()))
    }

    /// Sends one command line; returns the status code and body.
    pub fn call(&mut self, line: &str) -> Result<(u32, String)> {
        writeln!(self.w, "{line}").context("sending a CLI command")?;
        self.reply()
    }

    /// Fails unless the command answers 200.
    pub fn ok(&mut self, line: &str) -> Result<String> {
        let (code, body) = self.call(line)?;
        if code != 200 {
            bail!("varnish `{line}`: {code} {body}");
        }
        Ok(body)
    }
}
