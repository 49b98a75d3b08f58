"""duogpt report: compare evaluation results in one table."""

from __future__ import annotations

from duogpt import report
from duogpt.cli import options
from duogpt.files import write_text


def add(sub) -> None:
    p = sub.add_parser(
        "report",
        help="compare evaluation results in one table",
        description="Compare duogpt eval --json results; ratios are against the first file.",
    )
    p.add_argument("results", nargs="+", metavar="RESULT_JSON", help="files written by duogpt eval --json")
    options.output_file(p, "--markdown", "also write the table as Markdown")
    options.output_file(p, "--csv", "also write the table as CSV")
    p.set_defaults(run=run)


def run(args) -> int:
    options.check_outputs(args.markdown, args.csv)
    rows = report.table_rows(report.load_results(args.results))
    text = report.markdown(report.COLUMNS, rows)
    print(text, end="")
    if args.markdown:
        write_text(args.markdown, text)
    if args.csv:
        write_text(args.csv, report.csv_text(report.COLUMNS, rows))
    return 0
