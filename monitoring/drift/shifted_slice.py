"""The shipped shifted slice `data/drift/shifted.jsonl`: SQL questions, a domain the sample corpus never asks.

The sample corpus asks about Python standard-library functions. This slice is what a change in who uses the
service looks like: people asking for SQL queries over their tables, what a query returns, how to fix one,
what a clause means. No dataset can be downloaded here, so it is generated from templates over small
synthetic tables (fixed name lists, seeded values) and every answer is checked with the real SQLite engine
of the standard library: each written query runs, each "what does it return" answer is the query's actual
result, each broken query really fails and its fix really runs. Deterministic: same seed, same bytes
(`python -m monitoring.drift.shifted_slice --check` verifies the shipped file).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from llmops.data.records import write_jsonl
from llmops.data.text import record_id

DEFAULT_OUT = Path("data/drift/shifted.jsonl")
DEFAULT_RECORDS = 1500
DEFAULT_SEED = 20261123
SOURCE = "sql:{kind}"

_NAMES = ["Alice", "Bob", "Carla", "Deepak", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
          "Mateo", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara"]
_CITIES = ["Berlin", "Lagos", "Lima", "Oslo", "Osaka", "Perth", "Quito", "Seoul", "Tunis", "Vienna"]
_DEPTS = ["Sales", "Finance", "Support", "Research", "Legal", "Marketing"]
_CATS = ["books", "garden", "kitchen", "toys", "sports", "music"]
_PRODUCTS = ["lamp", "kettle", "tent", "chess set", "rake", "violin", "novel", "ball", "mug", "drone"]

# table -> (columns with SQL types, row factory)
_Row = Callable[[random.Random, int], tuple]
TABLES: dict[str, tuple[list[tuple[str, str]], _Row]] = {
    "employees": ([("id", "INTEGER"), ("name", "TEXT"), ("department", "TEXT"), ("salary", "INTEGER"),
                   ("hire_year", "INTEGER")],
                  lambda r, i: (i, r.choice(_NAMES), r.choice(_DEPTS), r.randrange(30, 120) * 1000,
                                r.randrange(2008, 2026))),
    "products": ([("id", "INTEGER"), ("name", "TEXT"), ("category", "TEXT"), ("price", "REAL"), ("stock", "INTEGER")],
                 lambda r, i: (i, r.choice(_PRODUCTS), r.choice(_CATS), r.randrange(199, 9999) / 100,
                               r.randrange(0, 80))),
    "customers": ([("id", "INTEGER"), ("name", "TEXT"), ("city", "TEXT"), ("age", "INTEGER")],
                  lambda r, i: (i, r.choice(_NAMES), r.choice(_CITIES), r.randrange(18, 80))),
    "orders": ([("id", "INTEGER"), ("customer_id", "INTEGER"), ("product_id", "INTEGER"), ("quantity", "INTEGER"),
                ("order_year", "INTEGER")],
               lambda r, i: (i, r.randrange(1, 7), r.randrange(1, 7), r.randrange(1, 9), r.randrange(2019, 2026))),
}
_NUMERIC = {t: [c for c, ty in cols if ty in ("INTEGER", "REAL") and c != "id"] for t, (cols, _) in TABLES.items()}
_TEXT = {t: [c for c, ty in cols if ty == "TEXT"] for t, (cols, _) in TABLES.items()}

_CLAUSES = {
    "WHERE": "It keeps only the rows for which its condition is true, before any grouping.",
    "GROUP BY": "It collapses rows with equal values in the listed columns into one row per group, so aggregate "
                "functions like COUNT or SUM are computed per group.",
    "HAVING": "It filters groups after GROUP BY, so its condition may use aggregates such as COUNT(*) > 2.",
    "ORDER BY": "It sorts the result rows by the listed expressions, ascending unless DESC is given.",
    "LIMIT": "It caps how many result rows are returned; with OFFSET it skips rows first.",
    "DISTINCT": "It removes duplicate rows from the result.",
    "INNER JOIN": "It pairs rows of two tables that satisfy the ON condition and drops rows without a match.",
    "LEFT JOIN": "It keeps every row of the left table and fills the right table's columns with NULL when "
                 "nothing matches.",
    "UNION": "It appends the rows of a second SELECT and removes duplicates (UNION ALL keeps them).",
    "COALESCE": "It returns its first argument that is not NULL.",
    "CASE": "It chooses a value per row from a list of WHEN conditions, with an optional ELSE.",
    "IN": "It tests whether a value equals any value in a list or subquery.",
    "BETWEEN": "It tests whether a value lies in an inclusive range: x BETWEEN a AND b means a <= x AND x <= b.",
    "LIKE": "It matches text against a pattern where % is any run of characters and _ is one character.",
    "COUNT(*)": "It counts the rows of each group (or of the whole result), NULLs included.",
    "PRIMARY KEY": "It declares the column(s) whose values identify each row uniquely and are never NULL.",
    "FOREIGN KEY": "It requires a column's values to exist in another table's key column.",
    "INDEX": "CREATE INDEX builds a lookup structure that speeds up searches and sorts on its columns.",
    "TRANSACTION": "BEGIN ... COMMIT groups statements so they take effect together or not at all (ROLLBACK).",
    "VIEW": "CREATE VIEW saves a SELECT under a name that can be queried like a table.",
}


def _create(table: str) -> str:
    cols = ", ".join(f"{c} {ty}" for c, ty in TABLES[table][0])
    return f"CREATE TABLE {table} ({cols});"


def _rows(r: random.Random, table: str, n: int) -> list[tuple]:
    return [TABLES[table][1](r, i) for i in range(1, n + 1)]


def _db(tables: dict[str, list[tuple]]) -> sqlite3.Connection:
    con = sqlite3.connect(":memory:")
    for table, rows in tables.items():
        con.execute(_create(table))
        marks = ", ".join("?" * len(TABLES[table][0]))
        con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    return con


def _show(table: str, rows: list[tuple]) -> str:
    header = " | ".join(c for c, _ in TABLES[table][0])
    return "\n".join([f"{table}:", header] + [" | ".join(str(v) for v in row) for row in rows])


def _format_result(rows: list[tuple]) -> str:
    if not rows:
        return "No rows."
    if len(rows) == 1 and len(rows[0]) == 1:
        return str(rows[0][0])
    return "; ".join(", ".join(str(v) for v in row) for row in rows)


def _query(r: random.Random, table: str) -> tuple[str, str]:
    """(English task, SQL) for one table, from a handful of query shapes."""
    num = r.choice(_NUMERIC[table])
    text = r.choice(_TEXT[table]) if _TEXT[table] else None
    cut = {"salary": 60000, "price": 25.0, "stock": 20, "age": 40, "quantity": 4, "hire_year": 2015,
           "order_year": 2022, "customer_id": 3, "product_id": 3}[num]
    shape = r.randrange(6 if text else 4)
    if shape == 0:
        return f"counts the rows of {table} whose {num} is greater than {cut}", \
            f"SELECT COUNT(*) FROM {table} WHERE {num} > {cut};"
    if shape == 1:
        k = r.randrange(2, 5)
        return f"lists the {k} rows of {table} with the highest {num}", \
            f"SELECT * FROM {table} ORDER BY {num} DESC LIMIT {k};"
    if shape == 2:
        return f"returns the average {num} in {table}", f"SELECT AVG({num}) FROM {table};"
    if shape == 3:
        return f"returns the smallest and the largest {num} in {table}", \
            f"SELECT MIN({num}), MAX({num}) FROM {table};"
    if shape == 4:
        return f"counts the rows of {table} per {text}, largest group first", \
            f"SELECT {text}, COUNT(*) AS n FROM {table} GROUP BY {text} ORDER BY n DESC, {text};"
    return f"returns the total {num} per {text} in {table}", \
        f"SELECT {text}, SUM({num}) FROM {table} GROUP BY {text} ORDER BY {text};"


def _join_query(r: random.Random) -> tuple[str, str]:
    if r.random() < 0.5:
        return "returns each customer's name with the total quantity they ordered, largest first", \
            ("SELECT c.name, SUM(o.quantity) AS total FROM customers c JOIN orders o ON o.customer_id = c.id "
             "GROUP BY c.id ORDER BY total DESC;")
    return "lists the product names ordered by customers from a given city, without duplicates", \
        ("SELECT DISTINCT p.name FROM orders o JOIN customers c ON c.id = o.customer_id "
         "JOIN products p ON p.id = o.product_id WHERE c.city = ? ORDER BY p.name;")


_WRITE = ["Write a SQL query that {task}.", "Give me an SQL statement that {task}.",
          "How do I write a query that {task}?", "I need SQL that {task}. What should I run?"]
_RESULT = ["What does this SQL query return on the table below?", "Run this query in your head: what is its result?",
           "Given the table below, what is the output of the query?"]
_FIX = ["This SQL query fails. Fix it.", "Why does this query give a syntax error? Give the corrected query.",
        "Correct the following SQL statement."]
_EXPLAIN = ["What does {clause} do in SQL?", "Explain the SQL keyword {clause} in one or two sentences.",
            "When would I use {clause} in a SQL query?"]
_BREAK = [("SELECT ", "SELEC "), (" FROM ", " FORM "), (" WHERE ", " WHER "), (" ORDER BY ", " ORDER "),
          (" GROUP BY ", " GROUP "), (";", " WHERE;")]


def _record(kind: str, instruction: str, input_text: str, output: str) -> dict[str, str]:
    rec = {"instruction": instruction, "input": input_text, "output": output, "source": SOURCE.format(kind=kind)}
    return {"id": record_id(rec), **rec}


def _one(r: random.Random) -> dict[str, str]:
    kind = r.choices(["write", "result", "fix", "explain", "join"], weights=[4, 4, 2, 1, 1])[0]
    if kind == "explain":
        clause = r.choice(sorted(_CLAUSES))
        return _record(kind, r.choice(_EXPLAIN).format(clause=clause), "", _CLAUSES[clause])
    if kind == "join":
        task, sql = _join_query(r)
        schema = "\n".join(_create(t) for t in ("customers", "products", "orders"))
        city = r.choice(_CITIES)
        sql_text = sql.replace("?", f"'{city}'")
        task = task.replace("a given city", city)
        _db({t: [] for t in ("customers", "products", "orders")}).execute(sql_text)  # it must run
        return _record("write", r.choice(_WRITE).format(task=task), schema, sql_text)
    table = r.choice(sorted(TABLES))
    task, sql = _query(r, table)
    if kind == "write":
        _db({table: []}).execute(sql)
        return _record(kind, r.choice(_WRITE).format(task=task), _create(table), sql)
    if kind == "result":
        rows = _rows(r, table, r.randrange(3, 7))
        result = _db({table: rows}).execute(sql).fetchall()
        return _record(kind, r.choice(_RESULT), f"{sql}\n\n{_show(table, rows)}", _format_result(result))
    broken_from, broken_to = r.choice([b for b in _BREAK if b[0] in sql])
    broken = sql.replace(broken_from, broken_to, 1)
    con = _db({table: []})
    try:
        con.execute(broken)
    except sqlite3.Error:
        con.execute(sql)
        return _record(kind, r.choice(_FIX), broken, sql)
    return _one(r)  # the "break" happened to stay valid SQL: draw again


def build_shifted_sql(records: int = DEFAULT_RECORDS, seed: int = DEFAULT_SEED) -> list[dict[str, str]]:
    """`records` distinct SQL records (by content id), in generation order."""
    r = random.Random(f"{seed}|sql")
    out: dict[str, dict[str, str]] = {}
    attempts = 0
    while len(out) < records:
        attempts += 1
        if attempts > records * 50:
            raise RuntimeError(f"only {len(out)} distinct SQL records after {attempts} draws")
        rec = _one(r)
        out.setdefault(rec["id"], rec)
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="verify --out holds exactly what would be written")
    args = parser.parse_args(argv)
    records = build_shifted_sql(args.records, args.seed)
    if args.check:
        tmp = args.out.with_name(args.out.name + ".check")
        write_jsonl(records, tmp)
        same = args.out.is_file() and tmp.read_bytes() == args.out.read_bytes()
        tmp.unlink()
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    count = write_jsonl(records, args.out)
    print(f"{args.out}: {count} records, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
