//! The page gosyncd.hcl(5), the configuration file's, made from the README: its
//! "Configuration" section and its "Limits" subsection, turned from Markdown into roff.
//!
//! The README's tables are the one description of every key; this page is a rendering of
//! them, so the two cannot drift, and the tests check that those tables name every key
//! the parser accepts, and nothing it refuses. The converter knows the Markdown those
//! sections use (paragraphs, fenced code, tables, `-` lists, code spans, links) and
//! nothing more: anything else passes through as text. Pure: bytes in memory.

use clap_mangen::roff::{bold, roman, Inline, Roff};

use crate::config::DEFAULT_CONFIG_PATH;

/// The README, built into the binary so that `gosyncd man` needs no file beside it.
const README: &str = include_str!("../../../README.md");

/// The README parts the page is made of: (heading, section of the page).
const PARTS: &[(&str, &str)] = &[
    ("## Configuration", "DESCRIPTION"),
    ("### Limits", "LIMITS"),
];

/// The page's file name.
pub const FILE_NAME: &str = "gosyncd.hcl.5";

/// The README's text between `heading` and the next heading of the same or a higher
/// level, without the heading; `None` when the README has no such heading.
fn readme_part(readme: &str, heading: &str) -> Option<String> {
    let level = heading.split(' ').next().unwrap_or_default();
    let mut lines = readme.lines().skip_while(|line| *line != heading);
    lines.next()?;
    let mut in_code = false;
    let mut part = Vec::new();
    for line in lines {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        let is_heading = !in_code && line.starts_with('#');
        if is_heading {
            let other_level = line.split(' ').next().unwrap_or_default();
            if other_level.len() <= level.len() {
                break;
            }
        }
        part.push(line);
    }
    Some(part.join("\n"))
}

/// gosyncd.hcl(5) as roff.
pub fn page(source: &str, manual: &str) -> Vec<u8> {
    page_from(README, source, manual)
}

fn page_from(readme: &str, source: &str, manual: &str) -> Vec<u8> {
    let mut roff = Roff::new();
    roff.control("TH", ["GOSYNCD.HCL", "5", "", source, manual]);
    roff.control("SH", ["NAME"]);
    roff.text([roman("gosyncd.hcl - the configuration file of gosyncd")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold(DEFAULT_CONFIG_PATH)]);
    for (heading, section) in PARTS {
        roff.control("SH", [*section]);
        match readme_part(readme, heading) {
            Some(text) => markdown(&mut roff, &text),
            // Only a README edited without running the tests gets here.
            None => {
                roff.text([roman(format!(
                    "(The README has no \"{}\" section to take this from.)",
                    heading.trim_start_matches('#').trim()
                ))]);
            }
        }
    }
    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([bold(DEFAULT_CONFIG_PATH)]);
    roff.text([roman(
        "The file read when -config is not given. An annotated example ships as \
         contrib/gosyncd.example.hcl, and in the Debian package as \
         /usr/share/doc/gosyncd/examples/config.hcl.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("gosyncd"),
        roman("(1), "),
        bold("gosyncd-check-config"),
        roman(
            "(1). The sections this page refers to are in the README, \
             /usr/share/doc/gosyncd/README.md in the Debian package.",
        ),
    ]);
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    roff.to_writer(&mut out).expect("write to memory");
    out
}

/// Appends `text`, Markdown, to `roff`.
fn markdown(roff: &mut Roff, text: &str) {
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(title) = line.strip_prefix('#') {
            roff.control("SS", [title.trim_start_matches('#').trim()]);
        } else if line.starts_with("```") {
            roff.control("PP", []);
            roff.control("RS", ["4"]);
            roff.control("nf", []);
            for code in lines.by_ref().take_while(|l| !l.starts_with("```")) {
                roff.text([roman(code)]);
            }
            roff.control("fi", []);
            roff.control("RE", []);
        } else if line.starts_with('|') {
            let header = cells(line);
            let mut rows = Vec::new();
            while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
                rows.push(cells(row));
            }
            table(roff, &header, &rows);
        } else if let Some(item) = line.strip_prefix("- ") {
            let mut item = item.to_string();
            while let Some(more) = lines.next_if(|l| l.starts_with("  ")) {
                item.push(' ');
                item.push_str(more.trim());
            }
            roff.control("IP", ["\\(bu", "2"]);
            roff.text(inline(&item));
        } else {
            let mut paragraph = line.to_string();
            while let Some(more) = lines.next_if(|l| !starts_a_block(l)) {
                paragraph.push(' ');
                paragraph.push_str(more.trim());
            }
            roff.control("PP", []);
            roff.text(inline(&paragraph));
        }
    }
}

/// Whether `line` ends the paragraph before it: a blank line, or the start of a
/// heading, code block, table or list.
fn starts_a_block(line: &str) -> bool {
    line.trim().is_empty() || ["#", "```", "|", "- "].iter().any(|p| line.starts_with(p))
}

/// A Markdown table as tagged paragraphs: the first cell in bold as the tag, the middle
/// cells after it as `(header: value)`, the last as the paragraph. The separator row
/// (`| --- |`) is dropped.
fn table(roff: &mut Roff, header: &[String], rows: &[Vec<String>]) {
    for row in rows
        .iter()
        .filter(|row| !row.iter().all(|c| c.chars().all(|ch| ch == '-')))
    {
        let Some((first, rest)) = row.split_first() else {
            continue;
        };
        roff.control("TP", []);
        let mut tag = inline_with(first, true);
        let (meaning, middle) = rest
            .split_last()
            .map_or((None, rest), |(m, r)| (Some(m), r));
        for (name, value) in header.iter().skip(1).zip(middle) {
            tag.push(roman(format!(" ({name}: ")));
            tag.extend(inline(value));
            tag.push(roman(")"));
        }
        roff.text(tag);
        if let Some(meaning) = meaning {
            roff.text(inline(meaning));
        }
    }
}

/// The cells of a table row, trimmed; `\|` is a `|` inside a cell.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|');
    let row = row.strip_suffix('|').unwrap_or(row);
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_string()),
            c => cell.push(c),
        }
    }
    out.push(cell.trim().to_string());
    out
}

/// A line of Markdown as roff: code spans in bold, links as their text, and "below"
/// (where the README points at another of its sections) as "in the README".
fn inline(text: &str) -> Vec<Inline> {
    inline_with(text, false)
}

fn inline_with(text: &str, all_bold: bool) -> Vec<Inline> {
    // Links first: their text may be a code span (`[`contrib/x.hcl`](contrib/x.hcl)`).
    unlink(text)
        .split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| {
            let is_code = i % 2 == 1;
            if is_code || all_bold {
                bold(part)
            } else {
                roman(part.replace(" below.", " in the README."))
            }
        })
        .collect()
}

/// `[text](target)` as `text`.
fn unlink(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let link = after.find("](").and_then(|close| {
            let end = after[close..].find(')')?;
            Some((close, close + end))
        });
        match link {
            Some((close, end)) => {
                out.push_str(&rest[..open]);
                out.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The first cells of the README's table rows in `part` (`directory "PATH" { ... }`,
    /// `max_file_size`), without their backquotes.
    fn first_cells(part: &str) -> Vec<String> {
        let text = readme_part(README, part).unwrap();
        text.lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| cells(l)[0].trim_matches('`').to_string())
            .collect()
    }

    /// The keys a first cell names: its first word, and the words in its braces
    /// (`backup { directory keep }` names backup, directory and keep).
    fn named_keys(cell: &str) -> Vec<String> {
        let head = cell.split([' ', '=']).next().unwrap_or_default();
        let braced = cell
            .split_once('{')
            .map_or("", |(_, rest)| rest.split('}').next().unwrap_or_default());
        std::iter::once(head)
            .chain(braced.split_whitespace())
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_string)
            .collect()
    }

    /// The keys the parser lists as known in its error for the unknown key in `text`.
    fn accepted_keys(text: &str) -> BTreeSet<String> {
        let message = Config::from_str(text, Path::new("t.hcl"))
            .unwrap_err()
            .to_string();
        let list = message
            .split("known keys: ")
            .nth(1)
            .unwrap_or_else(|| panic!("no list of known keys in {message:?}"));
        list.trim_end_matches(')')
            .split(", ")
            .map(|k| k.trim_start_matches("and a ").trim_end_matches(" block"))
            .map(str::to_string)
            .collect()
    }

    const VALID_TOP: &str = r#"
        bind_address = ":8080"
        remotes = ["10.0.0.2:8080"]
        tls_ca_certificate = "ca.pem"
        tls_certificate = "node.pem"
        tls_private_key = "node.key"
    "#;

    #[test]
    fn the_readme_tables_name_every_key_the_parser_accepts_and_no_other() {
        let unknown = "no_such_key = 1";
        let top = accepted_keys(&format!("{VALID_TOP}\n{unknown}\n"));
        let directory = accepted_keys(&format!(
            "{VALID_TOP}\ndirectory \"/etc/x\" {{\n{unknown}\n}}\n"
        ));
        let backup = accepted_keys(&format!("{VALID_TOP}\nbackup {{\n{unknown}\n}}\n"));
        assert!(
            top.contains("bind_address") && top.contains("limits"),
            "{top:?}"
        );
        assert!(directory.contains("validate"), "{directory:?}");
        assert!(backup.contains("keep"), "{backup:?}");
        let accepted: BTreeSet<String> = [top, directory, backup].into_iter().flatten().collect();

        let mut documented: BTreeSet<String> = first_cells("## Configuration")
            .iter()
            .flat_map(|cell| named_keys(cell))
            .collect();
        // The limits block is introduced in its own part, above its table.
        if readme_part(README, "### Limits")
            .unwrap()
            .contains("`limits { ... }`")
        {
            documented.insert("limits".into());
        }
        assert_eq!(
            documented, accepted,
            "the README's configuration tables (left) and the keys the parser accepts \
             (right) differ"
        );

        let limits: BTreeSet<String> = first_cells("### Limits").into_iter().collect();
        let accepted_limits: BTreeSet<String> = crate::config::limits::KEYS
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(
            limits, accepted_limits,
            "the README's limits table (left) and the parser's limits keys (right) differ"
        );
    }

    #[test]
    fn every_row_of_the_readme_tables_is_a_tagged_paragraph_of_the_page() {
        let page = text(&page("gosyncd 0", "gosyncd manual"));
        let lines: Vec<&str> = page.lines().collect();
        let tags: Vec<&str> = lines
            .windows(2)
            .filter(|pair| pair[0] == ".TP")
            .map(|pair| pair[1])
            .collect();
        let rows: Vec<String> = ["## Configuration", "### Limits"]
            .into_iter()
            .flat_map(first_cells)
            .collect();
        assert!(rows.len() > 30, "{rows:?}");
        for row in rows {
            let key = named_keys(&row).remove(0);
            assert!(
                tags.iter().any(|t| t.starts_with(&format!("\\fB{key}"))),
                "{key}: {tags:?}"
            );
        }
    }

    #[test]
    fn the_page_holds_no_markdown_and_points_at_the_readme() {
        let page = text(&page("gosyncd 0", "gosyncd manual"));
        assert!(page.contains(".TH GOSYNCD.HCL 5"), "{page}");
        for heading in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "LIMITS",
            "FILES",
            "\"SEE ALSO\"",
        ] {
            assert!(
                page.contains(&format!(".SH {heading}\n")),
                "{heading}: {page}"
            );
        }
        assert!(!page.contains('`'), "{page}");
        assert!(!page.contains("\\-\\-\\- |"), "{page}");
        assert!(!page.contains("]("), "{page}");
        assert!(!page.contains(" below."), "{page}");
        assert!(page.contains("See Convergence in the README."), "{page}");
        assert!(!page.contains("(The README has no"), "{page}");
    }

    #[test]
    fn markdown_blocks_become_roff() {
        let readme = "\
# t

## Configuration

Read from `FILE`, see [the example](contrib/x.hcl) or [`y.hcl`](contrib/y.hcl).
`exclude` entries:
- first item
  continued
- second

```hcl
a = 1
.b = 2
```

| key | required | meaning |
| --- | --- | --- |
| `a` | yes | One \\| two. See Trust below. |

## Next

not taken
";
        let page = text(&page_from(readme, "s", "m"));
        assert!(
            page.contains(
                ".PP\nRead from \\fBFILE\\fR, see the example or \\fBy.hcl\\fR. \\fBexclude\\fR \
                 entries:\n"
            ),
            "{page}"
        );
        assert!(
            page.contains(".IP \\(bu 2\nfirst item continued\n"),
            "{page}"
        );
        assert!(page.contains(".IP \\(bu 2\nsecond\n"), "{page}");
        assert!(page.contains(".nf\na = 1\n\\&.b = 2\n.fi\n"), "{page}");
        assert!(
            page.contains(".TP\n\\fBa\\fR (required: yes)\nOne | two. See Trust in the README.\n"),
            "{page}"
        );
        assert!(!page.contains("not taken"), "{page}");
        // This README has no Limits part: the page says so rather than leave it empty.
        assert!(
            page.contains("(The README has no \"Limits\" section"),
            "{page}"
        );
    }
}
