//! JUnit XML for CI systems: the suite's results as `<testsuites>`.
//!
//! One `<testsuite>` per suite row (a topology's guest boot, or a host row such as
//! `clippy`), one `<testcase>` per case; a failed case carries `<failure message=…>` with
//! its details (KTAP diagnostics, host assertions, a log's tail) as text, a skipped one
//! `<skipped message=…/>`. The format is the de-facto one Jenkins, GitLab and GitHub
//! reporters read (the Ant task's): `tests`, `failures`, `errors` (always 0: the lab
//! reports no errors apart from failures), `skipped` and `time` (seconds) on every level.
//! Text is escaped and characters XML 1.0 cannot carry (console control codes) become
//! U+FFFD. Pure: the caller writes the file ([`crate::summary`]).

use crate::ktap::Verdict;
use std::fmt::Write;

/// One case of a suite.
#[derive(Debug, Clone)]
pub struct Case<'a> {
    pub name: &'a str,
    pub seconds: f64,
    pub verdict: Verdict,
    /// The one-line reason (a failure's or a skip's).
    pub message: &'a str,
    /// Longer text for a failure or a skip (diagnostics, a log's tail); may be empty.
    pub details: &'a str,
}

/// One suite row.
#[derive(Debug, Clone)]
pub struct Suite<'a> {
    pub name: &'a str,
    /// The row's wall time (for a topology the whole boot, more than its cases' sum).
    pub seconds: f64,
    /// `<properties>`: what produced the results (QEMU, kernel, …).
    pub properties: Vec<(String, String)>,
    pub cases: Vec<Case<'a>>,
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    skipped: usize,
}

impl Counts {
    fn of<'a>(cases: impl IntoIterator<Item = &'a Case<'a>>) -> Counts {
        let mut c = Counts::default();
        for case in cases {
            c.tests += 1;
            match case.verdict {
                Verdict::Fail => c.failures += 1,
                Verdict::Skip => c.skipped += 1,
                Verdict::Pass => {}
            }
        }
        c
    }

    fn attrs(&self, seconds: f64) -> String {
        format!(
            r#"tests="{}" failures="{}" errors="0" skipped="{}" time="{seconds:.3}""#,
            self.tests, self.failures, self.skipped
        )
    }
}

/// Text or attribute value, escaped; characters XML 1.0 forbids become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if u32::from(c) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// The whole document.
pub fn render(name: &str, suites: &[Suite]) -> String {
    let all = Counts::of(suites.iter().flat_map(|s| s.cases.iter()));
    let total: f64 = suites.iter().map(|s| s.seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        r#"<testsuites name="{}" {}>"#,
        escape(name),
        all.attrs(total)
    );
    for s in suites {
        let _ = writeln!(
            x,
            r#"  <testsuite name="{}" {}>"#,
            escape(s.name),
            Counts::of(&s.cases).attrs(s.seconds)
        );
        if !s.properties.is_empty() {
            x.push_str("    <properties>\n");
            for (k, v) in &s.properties {
                let _ = writeln!(
                    x,
                    r#"      <property name="{}" value="{}"/>"#,
                    escape(k),
                    escape(v)
                );
            }
            x.push_str("    </properties>\n");
        }
        for c in &s.cases {
            let _ = write!(
                x,
                r#"    <testcase classname="{}" name="{}" time="{:.3}""#,
                escape(s.name),
                escape(c.name),
                c.seconds
            );
            let (tag, body) = match c.verdict {
                Verdict::Pass => {
                    x.push_str("/>\n");
                    continue;
                }
                Verdict::Fail => ("failure", true),
                Verdict::Skip => ("skipped", !c.details.is_empty()),
            };
            x.push_str(">\n");
            let _ = write!(x, r#"      <{tag} message="{}""#, escape(c.message));
            if body {
                let _ = writeln!(x, ">{}</{tag}>", escape(c.details));
            } else {
                x.push_str("/>\n");
            }
            x.push_str("    </testcase>\n");
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case<'a>(name: &'a str, verdict: Verdict, message: &'a str, details: &'a str) -> Case<'a> {
        Case {
            name,
            seconds: 1.5,
            verdict,
            message,
            details,
        }
    }

    #[test]
    fn escapes_markup_and_control_codes() {
        assert_eq!(
            escape("a<b>&\"c\" 'd'\tok\n\u{1b}[1m"),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;\tok\n\u{fffd}[1m"
        );
    }

    #[test]
    fn suites_cases_failures_and_skips() {
        let suites = [
            Suite {
                name: "clippy",
                seconds: 40.0,
                properties: vec![],
                cases: vec![case("clippy", Verdict::Pass, "", "")],
            },
            Suite {
                name: "switch",
                seconds: 83.25,
                properties: vec![("qemu_version".into(), "11.1.3".into())],
                cases: vec![
                    case(
                        "p2p-read",
                        Verdict::Fail,
                        "peer < 64M",
                        "# host assertion: <x>",
                    ),
                    case("uring-dmabuf-read", Verdict::Skip, "needs the series", ""),
                ],
            },
        ];
        let x = render("p2plab", &suites);
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"p2plab\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"123.250\">\n"), "{x}");
        assert!(x.contains("  <testsuite name=\"clippy\" tests=\"1\" failures=\"0\" errors=\"0\" skipped=\"0\" time=\"40.000\">\n    <testcase classname=\"clippy\" name=\"clippy\" time=\"1.500\"/>\n  </testsuite>\n"), "{x}");
        assert!(
            x.contains("<property name=\"qemu_version\" value=\"11.1.3\"/>"),
            "{x}"
        );
        assert!(x.contains("<testcase classname=\"switch\" name=\"p2p-read\" time=\"1.500\">\n      <failure message=\"peer &lt; 64M\"># host assertion: &lt;x&gt;</failure>\n    </testcase>"), "{x}");
        assert!(
            x.contains("<skipped message=\"needs the series\"/>\n"),
            "{x}"
        );
        assert!(x.ends_with("  </testsuite>\n</testsuites>\n"));
        // What a CI system's XML parser reads back.
        let doc = roxmltree::Document::parse(&x).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let suites: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("testsuite"))
            .collect();
        assert_eq!(suites.len(), 2);
        assert_eq!(suites[1].attribute("failures"), Some("1"));
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(failure.attribute("message"), Some("peer < 64M"));
        assert_eq!(failure.text(), Some("# host assertion: <x>"));
    }

    #[test]
    fn console_text_stays_well_formed() {
        let details = "[    5.7] WARNING: \u{1b}[31mred\u{7} & <more>\u{0}";
        let suites = [Suite {
            name: "a&b",
            seconds: 0.0,
            properties: vec![],
            cases: vec![case("c\"d", Verdict::Fail, "x\u{8}y", details)],
        }];
        let x = render("p2plab", &suites);
        let doc = roxmltree::Document::parse(&x).expect("well-formed XML");
        let tc = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap();
        assert_eq!(tc.attribute("classname"), Some("a&b"));
        assert_eq!(tc.attribute("name"), Some("c\"d"));
        let f = tc.first_element_child().unwrap();
        assert_eq!(f.attribute("message"), Some("x\u{fffd}y"));
        assert_eq!(
            f.text(),
            Some("[    5.7] WARNING: \u{fffd}[31mred\u{fffd} & <more>\u{fffd}")
        );
    }
}
