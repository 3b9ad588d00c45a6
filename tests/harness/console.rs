//! The admin console from the tests' side: a proxy config with console users
//! (`app` and `app_md5` may run everything, `app_clear` SHOW only), and a raw
//! console client that logs in (MD5, as `app_md5`) and reads whole replies with
//! column names and type OIDs, which tokio-postgres's simple_query does not show.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::raw_client::*;

/// `yaml` from `proxy::config_yaml` with the console configured.
pub fn with_console(yaml: &str) -> String {
    let admin = "admin:\n  listen: \"127.0.0.1:0\"\n";
    assert!(yaml.contains(admin), "config_yaml's admin section moved");
    yaml.replace(
        admin,
        &format!("{admin}  console_users: [app, app_md5]\n  console_stats_users: [app_clear]\n"),
    )
}

/// One console reply.
#[derive(Debug, Default)]
pub struct Reply {
    /// (name, type OID) per column.
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: Option<String>,
    /// (SQLSTATE, message) of an ErrorResponse.
    pub error: Option<(String, String)>,
}

impl Reply {
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The value in `column` of each row.
    pub fn column(&self, column: &str) -> Vec<Option<String>> {
        let i = self
            .columns
            .iter()
            .position(|(n, _)| n == column)
            .unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns));
        self.rows.iter().map(|r| r[i].clone()).collect()
    }
}

pub struct RawConsole {
    pub stream: TcpStream,
}

fn cstring(body: &[u8], at: &mut usize) -> String {
    let end = body[*at..].iter().position(|&b| b == 0).expect("NUL") + *at;
    let s = String::from_utf8_lossy(&body[*at..end]).into_owned();
    *at = end + 1;
    s
}

fn field(body: &[u8], code: u8) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

impl RawConsole {
    /// Logs in to `database` as `app_md5`; Err(SQLSTATE, message) when refused.
    pub async fn try_login(
        addr: SocketAddr,
        database: &str,
    ) -> Result<RawConsole, (String, String)> {
        let mut stream = raw_connect(addr).await;
        stream
            .write_all(&startup_packet(
                196608,
                &[("user", "app_md5"), ("database", database)],
            ))
            .await
            .expect("startup");
        let (tag, body) = read_message(&mut stream).await;
        assert_eq!(tag, b'R');
        let salt = [body[4], body[5], body[6], body[7]];
        let response = switchyard::auth::md5::md5_response("app_md5", "app_md5_pw", salt);
        stream
            .write_all(&password_msg(&response))
            .await
            .expect("password");
        loop {
            match read_message(&mut stream).await {
                (b'Z', _) => return Ok(RawConsole { stream }),
                (b'E', body) => return Err((field(&body, b'C'), field(&body, b'M'))),
                _ => {}
            }
        }
    }

    pub async fn login(addr: SocketAddr) -> RawConsole {
        RawConsole::try_login(addr, "pgbouncer")
            .await
            .unwrap_or_else(|e| panic!("console login: {e:?}"))
    }

    /// Sends a simple query and reads the reply up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Reply {
        self.stream.write_all(&query_msg(sql)).await.expect("query");
        let mut reply = Reply::default();
        loop {
            let (tag, body) = read_message(&mut self.stream).await;
            match tag {
                b'T' => {
                    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut at = 2;
                    for _ in 0..n {
                        let name = cstring(&body, &mut at);
                        let oid = u32::from_be_bytes([
                            body[at + 6],
                            body[at + 7],
                            body[at + 8],
                            body[at + 9],
                        ]);
                        at += 18;
                        reply.columns.push((name, oid));
                    }
                }
                b'D' => reply.rows.extend(data_rows(&[(tag, body)])),
                b'C' => reply.tag = Some(cstring(&body, &mut 0)),
                b'E' => reply.error = Some((field(&body, b'C'), field(&body, b'M'))),
                b'Z' => return reply,
                _ => {}
            }
        }
    }
}
