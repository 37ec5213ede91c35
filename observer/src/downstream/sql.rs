//! SQL statement fingerprints: the statement with every literal replaced by `?`.
//!
//! A small hand tokenizer (no SQL grammar): string literals (`'..'` with `''` escapes,
//! `E'..'` with backslash escapes, `$tag$..$tag$`, any `word'..'` such as `N'..'`,
//! `X'..'`, `B'..'`, `DATE'..'`), numbers (ints, decimals, exponents, `0x..`, a sign that
//! cannot be a binary operator) and placeholders (`$1`, `?`, `:name`, `%s`, `%(name)s`)
//! all become `?`. Comments (`-- ..`, `/* .. */`, nested in PostgreSQL; `#` in MySQL)
//! are dropped (they can carry data), whitespace collapses to one space, known keywords
//! are upper-cased, identifiers stay as written. `IN (?, ?)` becomes `IN (?)` and
//! `VALUES (?, ?), (?, ?)` becomes `VALUES (?)`. An unterminated literal or comment
//! swallows the rest of the statement (`?`). Double-quoted tokens are identifiers when
//! they look like one (letters, digits, `_`), `?` otherwise; in the MySQL dialect they
//! are always `?` (they are strings unless `ANSI_QUOTES`), and backslashes escape in
//! every quoted string.

use super::MAX_FINGERPRINT;

/// The operation (first keyword, upper case, `OTHER` when there is none) and the
/// literal-free fingerprint of `sql` (PostgreSQL / standard SQL quoting).
pub fn fingerprint(sql: &str) -> (String, String) {
    fingerprint_dialect(sql, false)
}

/// As [`fingerprint`], with MySQL quoting: backslash escapes in `'..'` and `".."`,
/// `".."` is a string, `#` starts a comment, block comments do not nest.
pub fn fingerprint_mysql(sql: &str) -> (String, String) {
    fingerprint_dialect(sql, true)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    /// A keyword (upper-cased) or an identifier (as written).
    Word(String),
    /// A literal or placeholder.
    Lit,
    /// Punctuation or an operator.
    Punct(String),
}

struct Token {
    tok: Tok,
    space_before: bool,
}

fn fingerprint_dialect(sql: &str, mysql: bool) -> (String, String) {
    let toks = tokenize(sql, mysql);
    let operation = match toks.first() {
        Some(Token {
            tok: Tok::Word(w), ..
        }) if w.len() <= 16 && !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphabetic()) => {
            w.to_ascii_uppercase()
        }
        _ => "OTHER".to_string(),
    };
    let toks = collapse(toks);
    let mut out = String::new();
    for t in &toks {
        if t.space_before && !out.is_empty() {
            out.push(' ');
        }
        match &t.tok {
            Tok::Word(w) | Tok::Punct(w) => out.push_str(w),
            Tok::Lit => out.push('?'),
        }
        if out.len() > MAX_FINGERPRINT * 2 {
            break;
        }
    }
    (operation, cut(out))
}

/// Cuts `s` to `MAX_FINGERPRINT` bytes at a char boundary, ending with `…`.
pub(super) fn cut(mut s: String) -> String {
    if s.len() <= MAX_FINGERPRINT {
        return s;
    }
    let mut end = MAX_FINGERPRINT - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

const KEYWORDS: &[&str] = &[
    "ADD",
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "ANY",
    "AS",
    "ASC",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CALL",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLUMN",
    "COMMIT",
    "CONFLICT",
    "CONSTRAINT",
    "COPY",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIMESTAMP",
    "DEALLOCATE",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DO",
    "DROP",
    "DUPLICATE",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXECUTE",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FETCH",
    "FIRST",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GRANT",
    "GROUP",
    "HAVING",
    "IF",
    "IGNORE",
    "ILIKE",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISOLATION",
    "JOIN",
    "KEY",
    "LATERAL",
    "LEFT",
    "LEVEL",
    "LIKE",
    "LIMIT",
    "LOCK",
    "NATURAL",
    "NEXT",
    "NOT",
    "NOTHING",
    "NOWAIT",
    "NULL",
    "NULLS",
    "OF",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PREPARE",
    "PRIMARY",
    "READ",
    "REFERENCES",
    "RELEASE",
    "REPLACE",
    "RESET",
    "RETURNING",
    "REVOKE",
    "RIGHT",
    "ROLLBACK",
    "ROW",
    "ROWS",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHARE",
    "SHOW",
    "SKIP",
    "SOME",
    "START",
    "TABLE",
    "THEN",
    "TO",
    "TRANSACTION",
    "TRUE",
    "TRUNCATE",
    "UNION",
    "UNIQUE",
    "UNLOCK",
    "UPDATE",
    "USE",
    "USING",
    "VACUUM",
    "VALUES",
    "VIEW",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WORK",
];

fn is_keyword(w: &str) -> bool {
    w.len() <= 17 && {
        let up = w.to_ascii_uppercase();
        KEYWORDS.binary_search(&up.as_str()).is_ok()
    }
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || (!c.is_ascii() && !c.is_whitespace())
}

fn is_word_char(c: char) -> bool {
    is_word_start(c) || c.is_ascii_digit() || c == '$'
}

const OPERATOR_CHARS: &str = "+-*/<>=~!@#%^&|?:";

fn tokenize(sql: &str, mysql: bool) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let n = chars.len();
    let mut i = 0;
    let mut toks: Vec<Token> = Vec::new();
    let mut space = false;
    let at = |j: usize| -> char { chars.get(j).copied().unwrap_or('\0') };
    while i < n {
        let c = chars[i];
        // Whitespace and comments.
        if c.is_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if (c == '-' && at(i + 1) == '-') || (mysql && c == '#') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
            space = true;
            continue;
        }
        if c == '/' && at(i + 1) == '*' {
            i += 2;
            let mut depth = 1;
            while i < n && depth > 0 {
                if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                } else if !mysql && chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            space = true;
            continue;
        }
        let space_before = std::mem::take(&mut space);
        macro_rules! push {
            ($t:expr) => {
                toks.push(Token {
                    tok: $t,
                    space_before,
                })
            };
        }
        // Strings.
        if c == '\'' {
            i = skip_quoted(&chars, i, '\'', mysql);
            push!(Tok::Lit);
            continue;
        }
        if c == '"' {
            let end = skip_quoted(&chars, i, '"', mysql);
            let closed = end >= i + 2 && chars.get(end - 1) == Some(&'"');
            let inner: String = if closed {
                chars[i + 1..end - 1].iter().collect()
            } else {
                String::new()
            };
            let ident_like = !mysql
                && !inner.is_empty()
                && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if ident_like {
                push!(Tok::Word(format!("\"{inner}\"")));
            } else {
                push!(Tok::Lit);
            }
            i = end;
            continue;
        }
        if c == '`' {
            let start = i;
            i += 1;
            while i < n && chars[i] != '`' {
                i += 1;
            }
            if i < n {
                i += 1;
                push!(Tok::Word(chars[start..i].iter().collect()));
            } else {
                push!(Tok::Lit);
            }
            continue;
        }
        // Dollar quoting and `$1` placeholders.
        if c == '$' {
            if at(i + 1).is_ascii_digit() {
                i += 1;
                while i < n && chars[i].is_ascii_digit() {
                    i += 1;
                }
                push!(Tok::Lit);
                continue;
            }
            let mut j = i + 1;
            while j < n && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if at(j) == '$' && !at(i + 1).is_ascii_digit() {
                let tag: Vec<char> = chars[i..=j].to_vec();
                let mut k = j + 1;
                let mut end = n;
                while k + tag.len() <= n {
                    if chars[k..k + tag.len()] == tag[..] {
                        end = k + tag.len();
                        break;
                    }
                    k += 1;
                }
                i = end;
                push!(Tok::Lit);
                continue;
            }
            i += 1;
            push!(Tok::Punct("$".into()));
            continue;
        }
        // Numbers, with a sign that is not a binary operator.
        let prev_operand = matches!(
            toks.last().map(|t| &t.tok),
            Some(Tok::Word(w)) if !is_keyword(w)
        ) || matches!(toks.last().map(|t| &t.tok), Some(Tok::Lit))
            || matches!(toks.last().map(|t| &t.tok), Some(Tok::Punct(p)) if p == ")" || p == "]");
        let digit_at =
            |j: usize| at(j).is_ascii_digit() || (at(j) == '.' && at(j + 1).is_ascii_digit());
        if c.is_ascii_digit()
            || (c == '.' && at(i + 1).is_ascii_digit() && !prev_operand)
            || ((c == '-' || c == '+') && digit_at(i + 1) && !prev_operand)
        {
            i += 1;
            while i < n {
                let d = chars[i];
                let exponent_sign = (d == '+' || d == '-')
                    && matches!(chars[i - 1], 'e' | 'E')
                    && at(i + 1).is_ascii_digit();
                if d.is_ascii_alphanumeric() || d == '_' || d == '.' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            push!(Tok::Lit);
            continue;
        }
        // Words: keywords, identifiers, prefixed strings.
        if is_word_start(c) {
            let start = i;
            while i < n && is_word_char(chars[i]) {
                i += 1;
            }
            if at(i) == '\'' {
                let escapes = mysql || (i - start == 1 && matches!(c, 'e' | 'E'));
                i = skip_quoted(&chars, i, '\'', escapes);
                push!(Tok::Lit);
                continue;
            }
            let w: String = chars[start..i].iter().collect();
            if is_keyword(&w) {
                push!(Tok::Word(w.to_ascii_uppercase()));
            } else {
                push!(Tok::Word(w));
            }
            continue;
        }
        // Placeholders.
        if c == '?' && at(i + 1) != '|' && at(i + 1) != '&' && at(i + 1) != '-' {
            i += 1;
            push!(Tok::Lit);
            continue;
        }
        if c == ':'
            && at(i + 1) != ':'
            && is_word_start(at(i + 1))
            && (i == 0 || chars[i - 1] != ':')
        {
            i += 1;
            while i < n && is_word_char(chars[i]) {
                i += 1;
            }
            push!(Tok::Lit);
            continue;
        }
        if c == '%' && at(i + 1) == 's' && !is_word_char(at(i + 2)) {
            i += 2;
            push!(Tok::Lit);
            continue;
        }
        if c == '%' && at(i + 1) == '(' {
            let mut j = i + 2;
            while j < n && is_word_char(chars[j]) {
                j += 1;
            }
            if at(j) == ')' && at(j + 1) == 's' {
                i = j + 2;
                push!(Tok::Lit);
                continue;
            }
        }
        // Operators and punctuation.
        if OPERATOR_CHARS.contains(c) {
            let start = i;
            i += 1;
            while i < n
                && OPERATOR_CHARS.contains(chars[i])
                && !(chars[i] == '-' && at(i + 1) == '-')
                && !(chars[i] == '/' && at(i + 1) == '*')
                && !(mysql && chars[i] == '#')
                && chars[i] != '?'
            {
                i += 1;
            }
            push!(Tok::Punct(chars[start..i].iter().collect()));
            continue;
        }
        i += 1;
        push!(Tok::Punct(c.to_string()));
    }
    toks
}

/// The index just past the quoted string opening at `start` (`n` if unterminated).
fn skip_quoted(chars: &[char], start: usize, q: char, backslash: bool) -> usize {
    let n = chars.len();
    let mut i = start + 1;
    while i < n {
        let c = chars[i];
        if backslash && c == '\\' {
            i += 2;
            continue;
        }
        if c == q {
            if i + 1 < n && chars[i + 1] == q {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    n
}

fn is_punct(t: &Token, p: &str) -> bool {
    matches!(&t.tok, Tok::Punct(x) if x == p)
}

fn is_word(t: &Token, w: &str) -> bool {
    matches!(&t.tok, Tok::Word(x) if x == w)
}

/// The index just past a `( ?, ?, .. )` group starting at `i` (only `?`, `,`, `NULL`,
/// `DEFAULT`, `TRUE`, `FALSE` inside), if there is one.
fn literal_group(toks: &[Token], i: usize) -> Option<usize> {
    if !toks.get(i).is_some_and(|t| is_punct(t, "(")) {
        return None;
    }
    let mut j = i + 1;
    let mut any = false;
    while let Some(t) = toks.get(j) {
        match &t.tok {
            Tok::Punct(p) if p == ")" => return any.then_some(j + 1),
            Tok::Punct(p) if p == "," => {}
            Tok::Lit => any = true,
            Tok::Word(w) if matches!(w.as_str(), "NULL" | "DEFAULT" | "TRUE" | "FALSE") => {
                any = true
            }
            _ => return None,
        }
        j += 1;
    }
    None
}

/// `IN (?, ?, ?)` → `IN (?)`, `VALUES (?, ?), (?, ?)` → `VALUES (?)`.
fn collapse(toks: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let after_in = out.last().is_some_and(|t| is_word(t, "IN"));
        let after_values = out.last().is_some_and(|t| is_word(t, "VALUES"));
        if after_in || after_values {
            if let Some(mut end) = literal_group(&toks, i) {
                if after_values {
                    while toks.get(end).is_some_and(|t| is_punct(t, ",")) {
                        match literal_group(&toks, end + 1) {
                            Some(e) => end = e,
                            None => break,
                        }
                    }
                }
                let sp = toks[i].space_before;
                out.push(Token {
                    tok: Tok::Punct("(".into()),
                    space_before: sp,
                });
                out.push(Token {
                    tok: Tok::Lit,
                    space_before: false,
                });
                out.push(Token {
                    tok: Tok::Punct(")".into()),
                    space_before: false,
                });
                i = end;
                continue;
            }
        }
        let t = &toks[i];
        out.push(Token {
            tok: t.tok.clone(),
            space_before: t.space_before,
        });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> String {
        fingerprint(s).1
    }

    #[test]
    fn keywords_sorted() {
        let mut k = KEYWORDS.to_vec();
        k.sort();
        assert_eq!(k, KEYWORDS);
    }

    #[test]
    fn operations() {
        assert_eq!(fingerprint("select 1").0, "SELECT");
        assert_eq!(
            fingerprint("  /* x */ -- y\n insert into t values (1)").0,
            "INSERT"
        );
        assert_eq!(
            fingerprint("With x as (select 1) select * from x").0,
            "WITH"
        );
        assert_eq!(fingerprint("BEGIN").0, "BEGIN");
        assert_eq!(fingerprint("commit;").0, "COMMIT");
        assert_eq!(fingerprint("SET search_path = public").0, "SET");
        assert_eq!(fingerprint("").0, "OTHER");
        assert_eq!(fingerprint("   ").0, "OTHER");
        assert_eq!(fingerprint("(select 1)").0, "OTHER");
        assert_eq!(fingerprint("'canary' select").0, "OTHER");
        assert_eq!(fingerprint("abcdefghijklmnopq x").0, "OTHER");
        assert_eq!(fingerprint("t1 x").0, "OTHER");
        assert_eq!(fingerprint("éléphant").0, "OTHER");
    }

    #[test]
    fn literals_removed() {
        assert_eq!(
            fp("SELECT * FROM users WHERE email = 'bob@example.com' AND id = 42"),
            "SELECT * FROM users WHERE email = ? AND id = ?"
        );
        assert_eq!(
            fp("select a from t1 where col2 = 3"),
            "SELECT a FROM t1 WHERE col2 = ?"
        );
        assert_eq!(fp("SELECT 'it''s', 'a\\' , b"), "SELECT ?, ? , b");
        assert_eq!(fp("SELECT E'it\\'s canary', x"), "SELECT ?, x");
        assert_eq!(
            fp("SELECT $$canary 'x' $$, $tag$ a $$ b $tag$ FROM t"),
            "SELECT ?, ? FROM t"
        );
        assert_eq!(
            fp("SELECT N'abc', X'0f', B'101', DATE'2020-01-01'"),
            "SELECT ?, ?, ?, ?"
        );
        assert_eq!(
            fp("SELECT 1.5e-3, .5, 0x1F, 1e10, 3."),
            "SELECT ?, ?, ?, ?, ?"
        );
        assert_eq!(
            fp("SELECT a - 5, a-5, -5, (-5), x = -5"),
            "SELECT a - ?, a-?, ?, (?), x = ?"
        );
        assert_eq!(
            fp("UPDATE t SET v = '{\"k\": \"canary\"}' WHERE id = 'f47ac10b-58cc-4372-a567-0e02b2c3d479'"),
            "UPDATE t SET v = ? WHERE id = ?"
        );
        assert_eq!(fp("SELECT TRUE, false, null"), "SELECT TRUE, FALSE, NULL");
        assert_eq!(
            fp("select a::int, b::text[] from t"),
            "SELECT a::int, b::text[] FROM t"
        );
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            fp("SELECT * FROM t WHERE a = $1 AND b = ? AND c = :name AND d = %s AND e = %(x)s"),
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ? AND e = ?"
        );
        assert_eq!(fp("SELECT a % 2 FROM t"), "SELECT a % ? FROM t");
    }

    #[test]
    fn lists_collapse() {
        assert_eq!(
            fp("SELECT * FROM t WHERE id IN (1, 2, 3)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            fp("SELECT * FROM t WHERE id in ($1,$2)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            fp("INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL), (3, 'canary')"),
            "INSERT INTO t (a, b) VALUES (?)"
        );
        assert_eq!(
            fp("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO NOTHING"),
            "INSERT INTO t (a) VALUES (?) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(
            fp("SELECT * FROM t WHERE id IN (SELECT id FROM u)"),
            "SELECT * FROM t WHERE id IN (SELECT id FROM u)"
        );
    }

    #[test]
    fn comments_and_whitespace() {
        assert_eq!(
            fp("SELECT /* canary-secret-42 */ a\n\t FROM t -- canary\nWHERE b = 1"),
            "SELECT a FROM t WHERE b = ?"
        );
        assert_eq!(fp("SELECT /* a /* nested canary */ still */ 1"), "SELECT ?");
        assert_eq!(fp("SELECT a /* unterminated canary"), "SELECT a");
    }

    #[test]
    fn identifiers() {
        assert_eq!(
            fp("SELECT \"Col1\", \"has space canary\" FROM `tbl`"),
            "SELECT \"Col1\", ? FROM `tbl`"
        );
        assert_eq!(
            fp("select count(*) from public.orders o"),
            "SELECT count(*) FROM public.orders o"
        );
    }

    #[test]
    fn unterminated() {
        assert_eq!(fp("SELECT 'canary-secret-42"), "SELECT ?");
        assert_eq!(fp("SELECT $x$ canary"), "SELECT ?");
        assert_eq!(fp("SELECT \"canary"), "SELECT ?");
    }

    #[test]
    fn mysql_dialect() {
        let f = |s| fingerprint_mysql(s).1;
        assert_eq!(
            f("SELECT 'it\\'s canary', \"canary\" # canary\n FROM t"),
            "SELECT ?, ? FROM t"
        );
        assert_eq!(f("SELECT /* a /* b */ 1"), "SELECT ?");
        assert_eq!(
            f("SELECT _utf8mb4'canary' FROM t WHERE x IN (1,2)"),
            "SELECT ? FROM t WHERE x IN (?)"
        );
    }

    #[test]
    fn long_cut() {
        let sql = format!("SELECT {} FROM t", "élément_column, ".repeat(100));
        let f = fp(&sql);
        assert!(f.len() <= MAX_FINGERPRINT);
        assert!(f.ends_with('…'));
        let (op, f) = fingerprint(&"x".repeat(10_000));
        assert_eq!(op, "OTHER");
        assert!(f.len() <= MAX_FINGERPRINT);
    }

    #[test]
    fn no_literal_leaks_on_garbage() {
        let canaries = ["canary-secret-42", "4242424242"];
        let stmts = [
            "SELECT * FROM t WHERE a = 'canary-secret-42' AND b = 4242424242",
            "INSERT INTO t VALUES (E'canary-secret-42\\'', $q$canary-secret-42$q$, -4242424242)",
            "UPDATE t SET a = 'x''canary-secret-42'",
        ];
        let mut seed = 7u64;
        for s in stmts {
            for cutoff in 0..=s.len() {
                if !s.is_char_boundary(cutoff) {
                    continue;
                }
                for mysql in [false, true] {
                    let (op, f) = fingerprint_dialect(&s[..cutoff], mysql);
                    for c in canaries {
                        assert!(!f.contains(c) && !op.contains(c), "{f}");
                    }
                }
            }
        }
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let mut s = String::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let set = b"'\"`$-/*#\\ ?:%()e0x1aZ.,\n";
                s.push(set[(seed % set.len() as u64) as usize] as char);
            }
            let _ = fingerprint_dialect(&s, seed & 1 == 0);
        }
    }

    #[test]
    fn more_statements() {
        let cases = [
            ("SELECT * FROM t WHERE x = ANY($1) AND y::jsonb ?| array['a']", "SELECT * FROM t WHERE x = ANY(?) AND y::jsonb ?| array[?]"),
            ("select u.id from users u join orders o on o.user_id = u.id where o.total > 100.50 and u.name ilike '%bob%' order by 1 desc limit 10 offset 20",
             "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > ? AND u.name ILIKE ? ORDER BY ? DESC LIMIT ? OFFSET ?"),
            ("INSERT INTO t(a,b) VALUES($1,$2) RETURNING id", "INSERT INTO t(a,b) VALUES(?) RETURNING id"),
            ("UPDATE t SET data = data || '{\"k\":1}'::jsonb WHERE id = 'f47ac10b-58cc-4372-a567-0e02b2c3d479'", "UPDATE t SET data = data || ?::jsonb WHERE id = ?"),
            ("SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END FROM t", "SELECT CASE WHEN a > ? THEN ? ELSE ? END FROM t"),
            ("DELETE FROM t WHERE created_at < NOW() - INTERVAL '7 days'", "DELETE FROM t WHERE created_at < NOW() - INTERVAL ?"),
            ("SELECT \"user\".\"id\" FROM \"user\" WHERE \"user\".email = $1", "SELECT \"user\".\"id\" FROM \"user\" WHERE \"user\".email = ?"),
            ("select x from t where a between 1 and 10 and b not in (1,2,3) and c is not null", "SELECT x FROM t WHERE a BETWEEN ? AND ? AND b NOT IN (?) AND c IS NOT NULL"),
            ("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r", "WITH RECURSIVE r AS (SELECT ? AS n UNION ALL SELECT n+? FROM r WHERE n < ?) SELECT * FROM r"),
            ("ALTER USER app WITH PASSWORD 'canary-secret-42'", "ALTER USER app WITH PASSWORD ?"),
        ];
        for (sql, want) in cases {
            assert_eq!(fp(sql), want, "{sql}");
        }
        assert_eq!(
            fingerprint_mysql("SELECT @a := 5, `weird col` FROM db.t").1,
            "SELECT @a := ?, `weird col` FROM db.t"
        );
    }
}
