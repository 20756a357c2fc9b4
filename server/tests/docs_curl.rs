//! The docs' curl examples, run for real against the `keygate` binary: every
//! ```` ```sh ```` block that calls curl in `docs/http.md` (one fresh server
//! each) and in the README's server quickstart (in order, in one shell, as a
//! reader runs them). Each runs under `bash -eo pipefail` with `KEYGATE`,
//! `TOKEN` (the bootstrap key), `ID` and `SECRET` (a freshly minted key's id
//! and token) in its environment, and must exit 0: the docs use `curl -fsS`,
//! so an HTTP error fails the block.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;

const HTTP_MD: &str = include_str!("../../docs/http.md");
const README: &str = include_str!("../../README.md");
const ROUTES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/runloop.routes");

/// The bodies of the fenced blocks whose info string is exactly `sh`.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block");
    blocks
}

fn curl_blocks(markdown: &str) -> Vec<String> {
    sh_blocks(markdown)
        .into_iter()
        .filter(|b| b.contains("curl "))
        .collect()
}

/// The text of the `## {heading}` section, up to the next `## ` heading.
fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let start = markdown
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no `## {heading}` section"));
    let rest = &markdown[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// A server started as the docs assume (with a route table, for
/// forward-auth), its bootstrap token, and a restricted key minted over HTTP.
struct Fixture {
    dir: TempDir,
    server: Server,
    id: String,
    secret: String,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = TempDir::new("docs-curl");
        let server = Server::start(&dir.db(), &["--routes", ROUTES]);
        let r = server.authed(
            "POST",
            "/v1/restricted_keys",
            server.token(),
            Some(
                r#"{"name":"docs","scopes":[{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}]}"#,
            ),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        Fixture {
            id: v["id"].as_str().unwrap().to_owned(),
            secret: v["key_secret"].as_str().unwrap().to_owned(),
            dir,
            server,
        }
    }

    /// Runs `script` under `bash -eo pipefail`, in the fixture's directory;
    /// panics unless it exits 0. Returns its stdout.
    fn run(&self, script: &str) -> String {
        let out = Command::new("bash")
            .args(["-eo", "pipefail", "-c", script])
            .current_dir(&self.dir.0)
            .env("KEYGATE", format!("http://{}", self.server.addr))
            .env("TOKEN", self.server.token())
            .env("ID", &self.id)
            .env("SECRET", &self.secret)
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the block failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}\n--- server log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.server.log_text(),
        );
        stdout
    }
}

#[test]
fn every_curl_block_of_the_http_reference_exits_0() {
    let blocks = curl_blocks(HTTP_MD);
    assert!(blocks.len() >= 11, "only {} curl blocks", blocks.len());
    for block in &blocks {
        // A fresh server each: a block may revoke `TOKEN`'s key or `ID`.
        let fixture = Fixture::start();
        fixture.run(block);
    }
}

#[test]
fn the_http_reference_has_a_curl_example_for_every_route() {
    let blocks = curl_blocks(HTTP_MD);
    // (route, what its block must contain, whether it must send no `-X`)
    let routes: &[(&str, &[&str], bool)] = &[
        (
            "POST /v1/apikeys",
            &["-X POST", "$KEYGATE/v1/apikeys\""],
            false,
        ),
        (
            "POST /v1/restricted_keys",
            &[
                "-X POST",
                "$KEYGATE/v1/restricted_keys\"",
                "\"scopes\": [",
                "\"resource_type\": \"RESOURCE_TYPE_",
                "\"access_level\": \"ACCESS_LEVEL_",
            ],
            false,
        ),
        ("GET /v1/keys", &["$KEYGATE/v1/keys?"], true),
        ("GET /v1/keys/{id}", &["$KEYGATE/v1/keys/$ID\""], true),
        (
            "GET /v1/keys/{id}/usage",
            &["$KEYGATE/v1/keys/$ID/usage?bucket="],
            true,
        ),
        (
            "DELETE /v1/keys/{id}",
            &["-X DELETE", "$KEYGATE/v1/keys/$ID\""],
            false,
        ),
        (
            "POST /v1/keys/{id}/roll",
            &["-X POST", "$KEYGATE/v1/keys/$ID/roll\""],
            false,
        ),
        (
            "POST /v1/keys/revoke",
            &["-X POST", "$KEYGATE/v1/keys/revoke\"", "$SECRET"],
            false,
        ),
        (
            "PATCH /v1/keys/{id}",
            &[
                "-X PATCH",
                "$KEYGATE/v1/keys/$ID\"",
                "\"rate_limit\": {",
                "\"credits\": {",
            ],
            false,
        ),
        (
            "POST /v1/keys/{id}/credits",
            &[
                "-X POST",
                "$KEYGATE/v1/keys/$ID/credits\"",
                "\"add\": ",
                "\"set\": ",
            ],
            false,
        ),
        ("GET /v1/events", &["$KEYGATE/v1/events"], true),
        (
            "GET /v1/authorize (fixed scope)",
            &[
                "$KEYGATE/v1/authorize?resource_type=RESOURCE_TYPE_",
                "&access_level=ACCESS_LEVEL_",
            ],
            true,
        ),
        (
            "GET /v1/authorize (forward-auth)",
            &[
                "$KEYGATE/v1/authorize\"",
                "X-Original-Method: ",
                "X-Original-URI: ",
            ],
            true,
        ),
        ("GET /healthz", &["$KEYGATE/healthz\""], true),
        ("GET /readyz", &["$KEYGATE/readyz\""], true),
        ("GET /openapi.yaml", &["$KEYGATE/openapi.yaml\""], true),
    ];
    for (route, needles, get) in routes {
        assert!(
            blocks
                .iter()
                .any(|b| needles.iter().all(|n| b.contains(n)) && !(*get && b.contains("-X "))),
            "docs/http.md has no curl example for {route}"
        );
    }
    // `-f`: an HTTP error must fail the example, and so the test.
    for block in &blocks {
        for call in block.split("curl ").skip(1) {
            assert!(call.starts_with("-fsS "), "not `curl -fsS`: {block}");
        }
    }
}

#[test]
fn the_readme_server_quickstart_mints_an_admin_key_and_revokes_the_bootstrap_key() {
    let quickstart = section(README, "Quickstart (server)");
    let blocks = curl_blocks(quickstart);
    assert!(!blocks.is_empty(), "no curl in the server quickstart");
    let fixture = Fixture::start();
    // The blocks build on each other (`$ADMIN`): one shell, as a reader's.
    let stdout = fixture.run(&blocks.concat());
    // The revoked bootstrap key gets 401, the new admin key 204.
    assert!(stdout.contains("401\n204\n"), "{stdout}");
    let bootstrap = fixture.server.token();
    assert_eq!(
        fixture
            .server
            .authorize(bootstrap, "OBJECTS", "NONE")
            .status,
        401
    );
    assert!(stdout.contains("\"key_secret\":\"rk_"), "{stdout}");
}
