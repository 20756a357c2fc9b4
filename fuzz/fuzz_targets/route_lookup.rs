//! `lookup` on the Runloop table with hostile methods and paths: never
//! panics, canonical paths are fixed points, `explain` agrees, and no path
//! that a backend could resolve into a denied family is allowed.
#![no_main]

use std::sync::OnceLock;

use keygate::route::CanonicalPath;
use keygate::{Decision, RouteTable};
use libfuzzer_sys::fuzz_target;

const RUNLOOP: &str = include_str!("../../examples/runloop.routes");

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| RUNLOOP.parse().expect("runloop.routes parses"))
}

struct Input<'a> {
    target: &'a [u8],
}

fn percent_decode_once(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Paths a lenient backend might serve for `target`: decoded zero, one or
/// two times (and cut at a decoded `?` or `#`), `\` as `/`, `;params`
/// stripped, NUL-terminated, `//` merged, dot segments resolved.
fn readings(target: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let once = percent_decode_once(path);
    let twice = percent_decode_once(&once);
    let cut = |d: &[u8]| {
        d.split(|&b| b == b'?' || b == b'#')
            .next()
            .unwrap_or_default()
            .to_vec()
    };
    let (once_cut, twice_cut) = (cut(&once), cut(&twice));
    let mut out = Vec::new();
    for decoded in [path.to_vec(), once, twice, once_cut, twice_cut] {
        let cut = decoded
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default()
            .to_vec();
        for backslash in [false, true] {
            for params in [false, true] {
                let mut segs: Vec<Vec<u8>> = Vec::new();
                for seg in cut.split(|&b| b == b'/' || (backslash && b == b'\\')) {
                    let seg = if params {
                        seg.split(|&b| b == b';').next().unwrap_or_default()
                    } else {
                        seg
                    };
                    match seg {
                        b"" | b"." => {}
                        b".." => {
                            segs.pop();
                        }
                        s => segs.push(s.to_vec()),
                    }
                }
                out.push(segs);
            }
        }
    }
    out
}

fn denied_family(segs: &[Vec<u8>]) -> bool {
    let s = |i: usize| segs.get(i).map(Vec::as_slice);
    (s(0) == Some(b"v1")
        && matches!(
            s(1),
            Some(b"secrets" | b"network-policies" | b"gateway-configs" | b"mcp-configs" | b"axons")
        ))
        || s(0) == Some(b"pty")
}

// The first byte picks a method (from 248 on: the method is the bytes up to
// the first space); the rest is the request target.
fuzz_target!(|data: &[u8]| {
    let methods: [&[u8]; 8] = [
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"PATCH",
        b"DELETE",
        b"OPTIONS",
        b"PROPFIND",
    ];
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, target) = if pick < 248 {
        (methods[usize::from(pick) % methods.len()], rest)
    } else {
        let at = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        (&rest[..at], rest.get(at + 1..).unwrap_or_default())
    };
    let input = Input { target };
    let table = table();
    let result = table.lookup(method, input.target);
    let Ok(m) = result else {
        assert_eq!(result.map(|_| ()).unwrap_err().http_status(), 400);
        return;
    };
    // Anything a lenient backend could route into a denied family is denied.
    if readings(input.target).iter().any(|r| denied_family(r)) {
        assert_eq!(
            m.decision(),
            Decision::Deny,
            "{:?}",
            String::from_utf8_lossy(input.target)
        );
    }
    let canonical = CanonicalPath::new(input.target).expect("lookup accepted it");
    let text = canonical.to_string();
    if let (Ok(method), Ok(target)) = (
        std::str::from_utf8(method),
        std::str::from_utf8(input.target),
    ) {
        let e = table
            .explain(method, target)
            .expect("explain accepts what lookup accepts");
        assert_eq!(e.route(), m);
        // The canonical text is itself an acceptable target, a fixed point,
        // and decides the same.
        let again = table
            .lookup(method, &text)
            .unwrap_or_else(|e| panic!("{target:?} vs {text:?}: {e}"));
        assert_eq!(again.decision(), m.decision(), "{target:?} vs {text:?}");
        let fixed = CanonicalPath::new(text.as_bytes()).expect("canonical text is canonical");
        assert_eq!(fixed.to_string(), text, "{target:?}");
    }
});
