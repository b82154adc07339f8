//! A tiny document model, so the Markdown and the HTML report are rendered from the same
//! content and cannot drift apart.

use base64::Engine;

/// One block of the report.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    /// A heading of level 1..=3.
    Heading(u8, String),
    Paragraph(String),
    List(Vec<String>),
    /// A table; the first row is the header.
    Table(Vec<Vec<String>>),
    /// Preformatted text (the config).
    Code(String),
    /// A plot: Markdown shows the PNG, HTML inlines the SVG.
    Figure {
        caption: String,
        /// Relative to the report's folder.
        png: String,
        svg: String,
    },
}

/// Renders the document as GitHub-flavoured Markdown.
pub fn markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                out.push_str(&"#".repeat(usize::from(*level).clamp(1, 6)));
                out.push(' ');
                out.push_str(text);
                out.push_str("\n\n");
            }
            Block::Paragraph(text) => {
                out.push_str(text);
                out.push_str("\n\n");
            }
            Block::List(items) => {
                for item in items {
                    out.push_str("- ");
                    out.push_str(item);
                    out.push('\n');
                }
                out.push('\n');
            }
            Block::Table(rows) => {
                if let Some((header, body)) = rows.split_first() {
                    out.push_str(&md_row(header));
                    out.push_str(&md_row(&vec!["---".to_string(); header.len()]));
                    for row in body {
                        out.push_str(&md_row(row));
                    }
                    out.push('\n');
                }
            }
            Block::Code(text) => {
                out.push_str("```toml\n");
                out.push_str(text.trim_end());
                out.push_str("\n```\n\n");
            }
            Block::Figure { caption, png, svg } => {
                let alt = png
                    .rsplit('/')
                    .next()
                    .unwrap_or(png)
                    .trim_end_matches(".png");
                out.push_str(&format!(
                    "![{alt}]({png})\n\n*{caption}* ([SVG]({svg}))\n\n"
                ));
            }
        }
    }
    out
}

fn md_row(cells: &[String]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", cells.join(" | "))
}

/// Renders the document as one self-contained HTML page: styles inline, every figure's
/// SVG embedded as a base64 data URI (`svg_of` returns its text), no scripts, no links
/// to other files.
pub fn html(title: &str, blocks: &[Block], svg_of: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!("<title>{}</title>\n", escape(title)));
    out.push_str(
        "<style>\nbody{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;\
         color:#222;line-height:1.45}\ntable{border-collapse:collapse;margin:0.5rem 0 1.5rem;\
         font-size:0.9rem}\nth,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:right}\
         \nth{background:#f2f2f2}\ntd:first-child,th:first-child{text-align:left}\n\
         pre{background:#f6f6f6;padding:0.75rem;overflow-x:auto}\nfigure{margin:1rem 0}\n\
         figure img{max-width:100%;border:1px solid #ddd}\n</style>\n",
    );
    out.push_str("</head>\n<body>\n");
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let l = level.clamp(&1, &6);
                out.push_str(&format!("<h{l}>{}</h{l}>\n", escape(text)));
            }
            Block::Paragraph(text) => out.push_str(&format!("<p>{}</p>\n", inline(text))),
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    out.push_str(&format!("<li>{}</li>\n", inline(item)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table(rows) => {
                if let Some((header, body)) = rows.split_first() {
                    out.push_str("<table>\n<tr>");
                    for cell in header {
                        out.push_str(&format!("<th>{}</th>", inline(cell)));
                    }
                    out.push_str("</tr>\n");
                    for row in body {
                        out.push_str("<tr>");
                        for cell in row {
                            out.push_str(&format!("<td>{}</td>", inline(cell)));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</table>\n");
                }
            }
            Block::Code(text) => out.push_str(&format!("<pre>{}</pre>\n", escape(text))),
            Block::Figure { caption, svg, .. } => {
                out.push_str("<figure>\n");
                if let Some(text) = svg_of(svg) {
                    let data = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                    out.push_str(&format!(
                        "<img alt=\"{}\" src=\"data:image/svg+xml;base64,{data}\">\n",
                        escape(caption)
                    ));
                }
                out.push_str(&format!(
                    "<figcaption>{}</figcaption>\n</figure>\n",
                    inline(caption)
                ));
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text and renders the one piece of Markdown inline syntax the report uses:
/// `**bold**` and `` `code` ``.
fn inline(text: &str) -> String {
    let escaped = escape(text);
    let mut out = String::with_capacity(escaped.len());
    let (mut bold, mut code) = (false, false);
    let mut rest = escaped.as_str();
    while let Some(c) = rest.chars().next() {
        if !code && rest.starts_with("**") {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[2..];
        } else if c == '`' {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
            rest = &rest[1..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if code {
        out.push_str("</code>");
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}
