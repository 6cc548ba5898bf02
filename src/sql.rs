//! SQL text: quoting, and the one tokenizer every reading of SQL goes through
//! (the roles an archive's privileges name, a CREATE DATABASE's options, the
//! statements on a database to point at another name, a globals file's role
//! statements). Pure: no I/O.

use std::collections::BTreeMap;

/// Quotes an SQL identifier: `"my ""db"""`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'it''s'`.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A database name as libpq's `dbname` option, for every `--dbname`: libpq
/// reads a bare name containing `=` (or starting `postgresql://`) as a whole
/// connection string, so `--target-db "dbname=prod"` would write into `prod`.
/// Quoted as a connection-string value, a name is only ever a name.
pub fn dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keyword or unquoted identifier (or a number, an operator run).
    Word,
    /// `"..."`, quotes kept in the text.
    Quoted,
    /// `'...'`, `E'...'` or `$tag$...$tag$`, quotes kept in the text.
    String,
    /// One of `, ; ( ) =`.
    Punct,
}

/// A token and where it is in the text (comments and white space are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
    pub start: usize,
}

impl Token<'_> {
    /// An identifier's name: a quoted one as written, an unquoted one folded
    /// to lower case as PostgreSQL does. None for strings and punctuation.
    pub fn name(&self) -> Option<String> {
        match self.kind {
            Kind::Word | Kind::Quoted => Some(unquote(self.text)),
            _ => None,
        }
    }

    pub fn is(&self, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    fn end(&self) -> usize {
        self.start + self.text.len()
    }
}

fn punct(c: char) -> bool {
    matches!(c, ',' | ';' | '(' | ')' | '=')
}

/// Splits SQL into tokens. Unterminated quotes run to the end of the text.
pub fn tokens(sql: &str) -> Vec<Token<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // The end of a quoted run opened at `start` by `q`, doubled quotes inside.
    let quoted_end = |start: usize, q: u8| {
        let mut j = start + 1;
        while j < b.len() {
            if b[j] == q {
                if b.get(j + 1) == Some(&q) {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        b.len()
    };
    while i < b.len() {
        let c = b[i];
        let (kind, end) = match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'"' => (Kind::Quoted, quoted_end(i, b'"')),
            b'\'' => (Kind::String, quoted_end(i, b'\'')),
            b'E' | b'e' if b.get(i + 1) == Some(&b'\'') => {
                // E'...': a backslash escapes the next character.
                let mut j = i + 2;
                while j < b.len() {
                    match b[j] {
                        b'\\' => j += 2,
                        b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
                        b'\'' => break,
                        _ => j += 1,
                    }
                }
                (Kind::String, (j + 1).min(b.len()))
            }
            b'$' if dollar_tag(&sql[i..]).is_some() => {
                let tag = dollar_tag(&sql[i..]).expect("checked");
                let body = i + tag.len();
                let end = sql[body..]
                    .find(tag)
                    .map_or(b.len(), |n| body + n + tag.len());
                (Kind::String, end)
            }
            _ if punct(c as char) => (Kind::Punct, i + 1),
            _ => {
                let mut j = i;
                while j < b.len() {
                    let n = b[j];
                    if n.is_ascii_whitespace() || punct(n as char) || n == b'"' || n == b'\'' {
                        break;
                    }
                    if j > i && n == b'-' && b.get(j + 1) == Some(&b'-') {
                        break;
                    }
                    j += 1;
                }
                (Kind::Word, j)
            }
        };
        out.push(Token {
            kind,
            text: &sql[i..end],
            start: i,
        });
        i = end;
    }
    out
}

/// `$tag$` or `$$` at the start of `s`.
fn dollar_tag(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('$')?;
    let n = rest.find('$')?;
    let tag = &rest[..n];
    let ok = tag
        .chars()
        .enumerate()
        .all(|(k, c)| c == '_' || c.is_alphabetic() || (k > 0 && c.is_ascii_digit()));
    ok.then(|| &s[..n + 2])
}

/// An identifier as PostgreSQL reads it: `"My ""DB"""` is `My "DB"`, `App` is `app`.
pub fn unquote(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => ident.to_lowercase(),
    }
}

/// The roles named in GRANT/REVOKE/ALTER DEFAULT PRIVILEGES statements: after
/// `TO`, `FROM`, `GRANTED BY` and `FOR ROLE`, as identifiers (quoted or not).
pub fn acl_roles(sql: &str) -> Vec<String> {
    let t = tokens(sql);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let starts_list = t[i].is("TO")
            || t[i].is("FROM")
            || (i > 0 && t[i].is("BY") && t[i - 1].is("GRANTED"))
            || (i > 0 && t[i].is("ROLE") && t[i - 1].is("FOR"));
        if starts_list {
            i += 1;
            while i < t.len() {
                let special = [
                    "PUBLIC",
                    "GROUP",
                    "CURRENT_USER",
                    "SESSION_USER",
                    "CURRENT_ROLE",
                ];
                if !special.iter().any(|k| t[i].is(k)) {
                    out.extend(t[i].name());
                }
                if t.get(i + 1).is_some_and(|n| n.text == ",") {
                    i += 2;
                } else {
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// The statements of a script, each with its `;`, split where the tokenizer
/// finds a `;` outside quotes (a quoted name may hold a newline or a `;`).
pub fn statements(script: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for t in tokens(script) {
        if t.kind == Kind::Punct && t.text == ";" {
            let end = t.start + 1;
            let s = script[start..end].trim();
            if s != ";" {
                out.push(s);
            }
            start = end;
        }
    }
    let rest = script[start..].trim();
    if !rest.is_empty() && !tokens(rest).is_empty() {
        out.push(rest);
    }
    out
}

/// The first `n` words of a statement, upper-cased (for telling statements apart).
pub fn leading_words(sql: &str, n: usize) -> Vec<String> {
    tokens(sql)
        .iter()
        .take(n)
        .map(|t| t.text.to_ascii_uppercase())
        .collect()
}

/// `KEY = value` pairs of a statement (CREATE DATABASE's options), keys upper
/// case, values kept as SQL.
pub fn options(statement: &str) -> BTreeMap<String, String> {
    tokens(statement)
        .windows(3)
        .filter(|w| w[1].text == "=" && w[0].kind == Kind::Word)
        .map(|w| (w[0].text.to_ascii_uppercase(), w[2].text.to_string()))
        .collect()
}

/// Rewrites a statement on database `original` (`COMMENT ON DATABASE app ...`,
/// `GRANT ... ON DATABASE "My DB" ...`) to name `new` instead: every
/// identifier right after the keyword DATABASE that reads as `original`.
pub fn retarget(statement: &str, original: &str, new: &str) -> String {
    let t = tokens(statement);
    let mut out = String::new();
    let mut copied = 0;
    for w in t.windows(2) {
        if w[0].is("DATABASE") && w[1].name().as_deref() == Some(original) {
            out.push_str(&statement[copied..w[1].start]);
            out.push_str(&ident(new));
            copied = w[1].end();
        }
    }
    out.push_str(&statement[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        tokens(sql).iter().map(|t| t.text).collect()
    }

    #[test]
    fn tokens_keep_quotes_and_drop_comments() {
        assert_eq!(
            texts(
                "GRANT a,\"b \"\"c\" TO x; -- to y\n/* TO z */ 'it''s' E'\\'' $f$ TO w $f$ $$x$$"
            ),
            [
                "GRANT",
                "a",
                ",",
                "\"b \"\"c\"",
                "TO",
                "x",
                ";",
                "'it''s'",
                "E'\\''",
                "$f$ TO w $f$",
                "$$x$$"
            ]
        );
        assert_eq!(texts("LOCALE='C'"), ["LOCALE", "=", "'C'"]);
        assert_eq!(texts("'open"), ["'open"]);
        assert_eq!(texts("\"open"), ["\"open"]);
        assert_eq!(texts("é-- x"), ["é"]);
        assert!(tokens("").is_empty());
    }

    #[test]
    fn every_prefix_of_awkward_sql_tokenizes() {
        let sql = "GRANT \"ä\"\"b\" TO E'x\\' $a$ b $a$ /* c -- 'd'";
        for (i, _) in sql.char_indices() {
            let t = tokens(&sql[..i]);
            assert!(t.iter().all(|t| !t.text.is_empty()), "{:?}", &sql[..i]);
        }
    }

    #[test]
    fn acl_roles_are_found() {
        let sql = "REVOKE ALL ON TABLE public.t FROM PUBLIC;\nGRANT SELECT,INSERT ON TABLE public.t TO app_user, \"Weird \"\"Role\";\n\
                   GRANT ALL ON SCHEMA s TO reader WITH GRANT OPTION;\n\
                   ALTER DEFAULT PRIVILEGES FOR ROLE owner1 IN SCHEMA s GRANT SELECT ON TABLES TO Reporting;\n\
                   GRANT UPDATE ON TABLE t TO x GRANTED BY boss;\nCOMMENT ON TABLE t IS 'grant to nobody';\n\
                   COMMENT ON TABLE t IS $$ TO ghost $$;\n\
                   CREATE POLICY p ON public.t FOR SELECT TO rls_reader, CURRENT_USER USING (x <> 'TO nobody');";
        assert_eq!(
            acl_roles(sql),
            [
                "app_user",
                "Weird \"Role",
                "reader",
                "owner1",
                "reporting",
                "x",
                "boss",
                "rls_reader"
            ]
        );
    }

    #[test]
    fn create_database_options_are_read() {
        let o = options(
            "CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE='de_DE.UTF-8';",
        );
        assert_eq!(o["ENCODING"], "'UTF8'");
        assert_eq!(o["LOCALE_PROVIDER"], "libc");
        assert_eq!(o["LOCALE"], "'de_DE.UTF-8'");
        assert_eq!(o["TEMPLATE"], "template0");
        assert_eq!(
            options("CREATE DATABASE \"a = b\" WITH ENCODING = 'x = y';")["ENCODING"],
            "'x = y'"
        );
    }

    #[test]
    fn database_statements_are_retargeted() {
        for (statement, original, new, want) in [
            (
                "COMMENT ON DATABASE app IS 'x';",
                "app",
                "app_new",
                "COMMENT ON DATABASE \"app_new\" IS 'x';",
            ),
            (
                "GRANT CONNECT ON DATABASE \"My DB\" TO r;",
                "My DB",
                "s",
                "GRANT CONNECT ON DATABASE \"s\" TO r;",
            ),
            (
                "ALTER DATABASE apple SET x = 1;",
                "app",
                "s",
                "ALTER DATABASE apple SET x = 1;",
            ),
            // Only the identifier after DATABASE: a string mentioning it stays.
            (
                "COMMENT ON DATABASE app IS 'DATABASE app';",
                "app",
                "n",
                "COMMENT ON DATABASE \"n\" IS 'DATABASE app';",
            ),
            // An unquoted name is folded: `App` is `app`; `"App"` is not.
            (
                "ALTER DATABASE App SET x = 1;",
                "app",
                "n",
                "ALTER DATABASE \"n\" SET x = 1;",
            ),
            (
                "ALTER DATABASE \"App\" SET x = 1;",
                "app",
                "n",
                "ALTER DATABASE \"App\" SET x = 1;",
            ),
        ] {
            assert_eq!(retarget(statement, original, new), want, "{statement}");
        }
    }

    #[test]
    fn scripts_split_into_statements_outside_quotes() {
        let script = "CREATE ROLE \"nl\nrole\";\n-- a; comment\nALTER ROLE \"a;b\" WITH LOGIN;\nSET x = 'y;z';";
        let st = statements(script);
        assert_eq!(st.len(), 3, "{st:?}");
        assert_eq!(st[0], "CREATE ROLE \"nl\nrole\";");
        assert!(st[1].ends_with("ALTER ROLE \"a;b\" WITH LOGIN;"), "{st:?}");
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("my \"db\""), "\"my \"\"db\"\"\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(dbname("a'b\\c"), "dbname='a\\'b\\\\c'");
    }

    #[test]
    fn database_names_are_never_connection_strings() {
        assert_eq!(dbname("app"), "dbname='app'");
        assert_eq!(dbname("dbname=prod"), "dbname='dbname=prod'");
        assert_eq!(dbname("it's \\ x"), "dbname='it\\'s \\\\ x'");
        assert_eq!(
            dbname("postgresql://h/prod"),
            "dbname='postgresql://h/prod'"
        );
    }
}
