//! Fuzz targets (test builds only): every parser that reads bytes a client, a
//! server or a Patroni API controls, driven by mutated valid inputs. Each target
//! asserts that nothing panics and, where a second definition exists, that the two
//! agree (the frame scanner against itself fed in other chunks). The inputs are
//! generated from a seed per iteration, so a failure prints the seed that
//! reproduces it; a crash found once becomes an entry of `REGRESSIONS`.
//!
//! `cargo test` runs a short pass of each (`FUZZ_ITERATIONS`, 2,000 by default);
//! `benches/fuzz.sh` runs 10 million per target in a release build.

use bytes::BytesMut;

use crate::auth::scram::{ScramClient, ScramServer, ScramVerifier};
use crate::protocol::frame::{complete_message_len, FrameScanner, Messages};
use crate::protocol::{startup, tag};
use crate::server::statements::ServerStatements;
use crate::session::ledger::Ledger;
use crate::session::sql_scan;
use crate::session::statements::ClientStatements;
use crate::session::translate::Translator;
use crate::topology::{members, patroni};

/// Inputs that once made a target panic, replayed by every run: (target, seed).
const REGRESSIONS: &[(&str, u64)] = &[];

fn iterations() -> u64 {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// xorshift64*: small, fast, and the same everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Lengths and values that sit on boundaries parsers get wrong.
const INTERESTING: [u32; 9] = [0, 1, 3, 4, 5, 0x7f, 0x8000_0000, 0x7fff_ffff, 0xffff_ffff];

/// One to four random edits of `seed`: flipped bits, boundary values written over
/// a length field, bytes inserted, ranges deleted or repeated, a cut.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if data.len() >= 4 => {
                let i = rng.below(data.len() - 3);
                let value = rng.pick(&INTERESTING).to_be_bytes();
                data[i..i + 4].copy_from_slice(&value);
            }
            2 => {
                let len = 1 + rng.below(16);
                let extra = rng.bytes(len);
                data.splice(at..at, extra);
            }
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 if at < data.len() => {
                let end = (at + 1 + rng.below(32)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            5 => data.truncate(at),
            _ => {
                if let Some(byte) = data.get_mut(at) {
                    *byte = rng.pick(&[0, b',', b'=', b'$', 0xff, 0x80]);
                }
            }
        }
    }
    data
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    out.push(0);
    out
}

/// A plausible client message stream: what drivers send, in random order.
fn client_stream(rng: &mut Rng) -> Vec<u8> {
    let names = ["", "s1", "sy_0", "S_2"];
    let queries = [
        "select 1",
        "SET search_path TO app",
        "begin",
        "commit",
        "select pg_advisory_lock(1)",
        "listen x",
        "DEALLOCATE ALL",
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(8) {
        let name = rng.pick(&names);
        let part = match rng.below(9) {
            0 => message(tag::QUERY, &cstr(rng.pick(&queries))),
            1 => {
                let mut body = cstr(name);
                body.extend(cstr(rng.pick(&queries)));
                body.extend([0, 0]);
                message(tag::PARSE, &body)
            }
            2 => {
                let mut body = cstr("");
                body.extend(cstr(name));
                body.extend([0, 0, 0, 0, 0, 0]);
                message(tag::BIND, &body)
            }
            3 => {
                let mut body = vec![tag::TARGET_STATEMENT];
                body.extend(cstr(name));
                message(tag::DESCRIBE, &body)
            }
            4 => message(tag::EXECUTE, &[0, 0, 0, 0, 0]),
            5 => message(tag::SYNC, &[]),
            6 => message(tag::FLUSH, &[]),
            7 => {
                let mut body = vec![tag::TARGET_STATEMENT];
                body.extend(cstr(name));
                message(tag::CLOSE, &body)
            }
            _ => {
                let len = rng.below(8);
                message(tag::COPY_DATA, &rng.bytes(len))
            }
        };
        out.extend(part);
    }
    out
}

/// A plausible server reply stream.
fn server_stream(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(10) {
        let part = match rng.below(10) {
            0 => message(tag::PARSE_COMPLETE, &[]),
            1 => message(tag::BIND_COMPLETE, &[]),
            2 => message(
                tag::ROW_DESCRIPTION,
                b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
            ),
            3 => message(tag::DATA_ROW, b"\0\x01\0\0\0\x011"),
            4 => {
                let command = rng.pick(&["SELECT 1", "SET", "BEGIN", "COMMIT", "ROLLBACK"]);
                message(tag::COMMAND_COMPLETE, &cstr(command))
            }
            5 => message(tag::ERROR_RESPONSE, b"SERROR\0C42601\0Mboom\0\0"),
            6 => {
                let status = rng.pick(&[
                    tag::STATUS_IDLE,
                    tag::STATUS_IN_TRANSACTION,
                    tag::STATUS_FAILED,
                ]);
                message(tag::READY_FOR_QUERY, &[status])
            }
            7 => message(tag::PARAMETER_STATUS, b"TimeZone\0UTC\0"),
            8 => message(tag::NO_DATA, &[]),
            _ => message(tag::CLOSE_COMPLETE, &[]),
        };
        out.extend(part);
    }
    out
}

/// Runs `target` for every seed, then the regressions recorded for it.
fn run(name: &str, target: impl Fn(&mut Rng)) {
    let seeds = (0..iterations()).chain(
        REGRESSIONS
            .iter()
            .filter(|(target, _)| *target == name)
            .map(|(_, seed)| *seed),
    );
    for seed in seeds {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            target(&mut Rng::new(seed));
        }));
        assert!(
            outcome.is_ok(),
            "fuzz target {name} panicked at seed {seed}"
        );
    }
}

#[test]
fn frame_scanner() {
    run("frame_scanner", |rng| {
        let valid = client_stream(rng);
        let stream = mutate(rng, &valid);
        let max = 1 << 12;
        // Whole, then in random chunks: the same frames, the same verdict.
        let mut whole = Vec::new();
        let mut scanner = FrameScanner::new(max, |_| true);
        let verdict = scanner
            .scan(&stream, |frame| {
                whole.push((frame.tag, frame.body.to_vec()))
            })
            .is_ok();
        let mut split = Vec::new();
        let mut scanner = FrameScanner::new(max, |_| true);
        let mut rest = stream.as_slice();
        let mut split_verdict = true;
        while !rest.is_empty() && split_verdict {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
            split_verdict = scanner
                .scan(chunk, |frame| split.push((frame.tag, frame.body.to_vec())))
                .is_ok();
            rest = tail;
        }
        assert_eq!(verdict, split_verdict);
        assert_eq!(whole, split);
        // The one-message and iterator readers agree with it on complete prefixes.
        if let Ok(Some(len)) = complete_message_len(&stream, max) {
            assert!(len >= 5 && len <= stream.len());
        }
        let mut messages = Messages::new(&stream, max);
        let count = messages.by_ref().count();
        assert!(messages.consumed() <= stream.len() && count <= whole.len() + 1);
    });
}

#[test]
fn startup_packets() {
    let mut startup = 196_608u32.to_be_bytes().to_vec();
    for part in ["user", "app", "database", "appdb", "options", "-c x=1", ""] {
        startup.extend(cstr(part));
    }
    let mut sasl = cstr("SCRAM-SHA-256");
    sasl.extend(20u32.to_be_bytes());
    sasl.extend(b"n,,n=,r=abcdefghijkl");
    let ssl = 80_877_103u32.to_be_bytes().to_vec();
    let cancel = [
        80_877_102u32.to_be_bytes(),
        7u32.to_be_bytes(),
        9u32.to_be_bytes(),
    ]
    .concat();
    run("startup_packets", |rng| {
        let seed = rng.pick(&[&startup, &sasl, &ssl, &cancel]);
        let input = mutate(rng, seed);
        let _ = startup::parse_first_packet(&input);
        let _ = startup::parse_password(&input);
        let _ = startup::parse_sasl_initial(&input);
    });
}

#[test]
fn scram_server_messages() {
    let verifier = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096);
    let first = b"n,,n=,r=clientnonceclientnonce".to_vec();
    let valid_final = {
        let mut server = ScramServer::with_nonce(verifier.clone(), "servernonce");
        let mut client = ScramClient::with_nonce("pw", "clientnonceclientnonce");
        let server_first = server.handle_client_first(&client.client_first()).ok();
        server_first.and_then(|sf| client.handle_server_first(&sf).ok())
    };
    let valid_final = valid_final.unwrap_or_default();
    run("scram_server_messages", |rng| {
        let mut server = ScramServer::with_nonce(verifier.clone(), "servernonce");
        if rng.below(3) == 0 {
            let plus = rng.below(2) == 0;
            server.bind_channel(rng.bytes(32), plus);
        }
        let client_first = if rng.below(4) == 0 {
            first.clone()
        } else {
            mutate(rng, &first)
        };
        if server.handle_client_first(&client_first).is_ok() {
            let _ = server.handle_client_final(&mutate(rng, &valid_final));
        }
    });
}

#[test]
fn scram_client_messages() {
    // One PBKDF2 iteration: the mutations target the parser, not key derivation,
    // and a message that stays valid derives keys.
    let server_first =
        b"r=clientnonceclientnonceservernonce,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=1".to_vec();
    let server_final = b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec();
    run("scram_client_messages", |rng| {
        let mut client = ScramClient::with_nonce("pw", "clientnonceclientnonce");
        let input = mutate(rng, &server_first);
        if iteration_count(&input).is_some_and(|count| count > 64) {
            // Larger counts (up to the 100,000 cap) are valid and only slow.
            return;
        }
        if client.handle_server_first(&input).is_ok() {
            let _ = client.verify_server_final(&mutate(rng, &server_final));
        }
    });
}

/// The `i=` attribute of a server-first message, as digits, if it has one.
fn iteration_count(message: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(message).ok()?;
    let digits = text.split(',').find_map(|field| field.strip_prefix("i="))?;
    let digits: String = digits.chars().take_while(char::is_ascii_digit).collect();
    Some(digits.parse().unwrap_or(u64::MAX))
}

#[test]
fn patroni_json() {
    let cluster = br#"{"members":[{"name":"node1","role":"leader","state":"running","api_url":"http://10.0.0.1:8008/patroni","host":"10.0.0.1","port":5432,"timeline":2},{"name":"node2","role":"replica","state":"streaming","host":"10.0.0.2","port":5432,"lag":0}]}"#.to_vec();
    let node = br#"{"state":"running","role":"master","timeline":3,"xlog":{"location":67108864,"received_location":1,"replayed_location":1}}"#.to_vec();
    run("patroni_json", |rng| {
        let seed = rng.pick(&[&cluster, &node]);
        let input = mutate(rng, seed);
        let _ = members::parse_cluster(&input);
        let _ = patroni::parse_timeline(&input);
        let _ = patroni::parse_wal(&input);
    });
}

#[test]
fn sql_classifier() {
    let texts = [
        "SET search_path TO app, public; select 1",
        "select set_config('a.b', '1', false)",
        "DECLARE c CURSOR WITH HOLD FOR select 1",
        "create temp table t(x int); ROLLBACK TO SAVEPOINT a",
        "DO $$ begin perform 1; end $$",
        "EXECUTE sy_1; DEALLOCATE PREPARE sy_2",
    ];
    run("sql_classifier", |rng| {
        let seed = rng.pick(&texts);
        let input = mutate(rng, seed.as_bytes());
        let _ = sql_scan::scan(&input);
    });
}

#[test]
fn translator_and_ledger() {
    run("translator_and_ledger", |rng| {
        let mut ledger = Ledger::default();
        let mut client = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut translator = Translator {
            ledger: &mut ledger,
            client: &mut client,
            server: &mut server,
            max_prepared: 1 + rng.below(3),
            max_message: 1 << 12,
        };
        let valid = client_stream(rng);
        let mut inbox = BytesMut::from(mutate(rng, &valid).as_slice());
        let mut out = BytesMut::new();
        let _ = translator.run(&mut inbox, &mut out);
        // The server answers with a plausible (then mangled) stream, in chunks.
        let valid = server_stream(rng);
        let replies = mutate(rng, &valid);
        let mut scanner = FrameScanner::new(1 << 12, |_| true);
        let (mut segments, mut events) = (Vec::new(), Vec::new());
        let mut rest = replies.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
            if ledger
                .process(chunk, &mut scanner, &mut server, &mut segments, &mut events)
                .is_err()
            {
                break;
            }
            rest = tail;
        }
    });
}
