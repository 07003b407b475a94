"""A second reader of spark-lambda's Delta tables: delta-rs (the `deltalake` package), not Spark.

lk runs it after a spark-lambda run and checks what it prints, one JSON object:

- master: its rows, the distinct input positions (partition, offset) among them (a micro-batch
  appended twice after a crash would show as more rows than positions), its Parquet files,
  bytes and date/hour partitions;
- views: every version of the batch view table, and how many of them hold rows of more than one
  cutoff (a torn view: a batch run that wrote part of its view).

Usage: python lake_check.py LAKE_DIR
"""

import json
import os
import sys

from deltalake import DeltaTable, QueryBuilder


def scalar(table, sql):
    """The first row of `sql` over `table` (registered as t), as a dict of Python values."""
    batch = QueryBuilder().register("t", table).execute(sql).read_all()
    return {name: batch[name][0].as_py() for name in batch.column_names}


def main():
    lake = sys.argv[1]
    master = DeltaTable(os.path.join(lake, "master"))
    counts = scalar(master, "SELECT count(*) AS rows, count(DISTINCT (kafka_partition, kafka_offset)) AS positions, "
                            "count(DISTINCT (date, hour)) AS partitions FROM t")
    files = master.file_uris()
    views_path = os.path.join(lake, "batch_views")
    latest = DeltaTable(views_path).version()
    torn = 0
    for version in range(latest + 1):
        table = DeltaTable(views_path, version=version)
        cutoffs = scalar(table, "SELECT count(DISTINCT cutoff_us) AS cutoffs FROM t")["cutoffs"]
        torn += cutoffs > 1
    print(json.dumps({
        "master": {"rows": counts["rows"], "positions": counts["positions"], "partitions": counts["partitions"],
                   "files": len(files), "bytes": sum(os.path.getsize(uri.removeprefix("file://")) for uri in files)},
        "views": {"versions": latest + 1, "torn": torn},
    }))


if __name__ == "__main__":
    main()
