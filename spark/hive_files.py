"""Idempotent micro-batch writes into a partitioned Hive table.

A streaming sink names its files after the micro-batch id (``b<id>-<n>``). Spark
replays an unfinished batch with the same id and the same offsets after a crash,
so deleting what an earlier attempt of that id wrote, then writing again, gives
every batch exactly once in the table. Works on any Hadoop file system (the JVM's
FileSystem API does the listing, renames and deletes).
"""

from __future__ import annotations

from collections.abc import Sequence

REGISTER_CHUNK = 500  # partitions per ALTER TABLE ... ADD statement


class BatchFiles:
    """Writes one micro-batch's rows into the partitions of ``db.table``, replay-safe."""

    def __init__(self, spark, table: str, partition_cols: Sequence[str], staging_root: str):
        self.spark = spark
        self.table = table
        self.partition_cols = list(partition_cols)
        self.staging_root = staging_root
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
        self.location = next(r.data_type for r in rows if r.col_name == "Location")

    # -- Hadoop FileSystem through the JVM ------------------------------------
    def _path(self, path: str):
        return self.spark._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self):
        return self._path(self.location).getFileSystem(self.spark._jsc.hadoopConfiguration())

    def partition_dir(self, values: Sequence) -> str:
        return self.location + "/" + "/".join(f"{c}={v}" for c, v in zip(self.partition_cols, values))

    @staticmethod
    def prefix(batch_id: int) -> str:
        return f"b{batch_id:010d}-"

    # -- the protocol -----------------------------------------------------------
    def partitions_of(self, df) -> list[tuple]:
        return sorted(tuple(r) for r in df.select(*self.partition_cols).distinct().collect())

    def delete_attempt(self, batch_id: int, partitions: Sequence[tuple]) -> None:
        """Remove the files an earlier attempt of this batch left in these partitions."""
        fs = self._fs()
        for values in partitions:
            for status in fs.globStatus(self._path(f"{self.partition_dir(values)}/{self.prefix(batch_id)}*")) or []:
                fs.delete(status.getPath(), False)

    def existing_files(self, partitions: Sequence[tuple]) -> list[str]:
        """Parquet files already in these partitions (to de-duplicate against)."""
        fs = self._fs()
        files: list[str] = []
        for values in partitions:
            files += [s.getPath().toString() for s in fs.globStatus(self._path(f"{self.partition_dir(values)}/*.parquet")) or []]
        return files

    def write(self, df, batch_id: int, partitions: Sequence[tuple], register: Sequence[tuple] | None = None,
              max_records_per_file: int = 0, single_task: bool = True) -> None:
        """Write df (with the partition columns) as this batch's files, then register the partitions.

        ``single_task`` coalesces to one writer (one file per partition, for small
        batches); otherwise every task writes its own files in parallel, at most
        ``max_records_per_file`` rows each. ``register``: the partitions to add to the
        metastore (default: all of ``partitions``).
        """
        staging = f"{self.staging_root}/{self.table}/{self.prefix(batch_id)}"
        fs = self._fs()
        writer = (df.coalesce(1) if single_task else df).write.mode("overwrite")
        if max_records_per_file:
            writer = writer.option("maxRecordsPerFile", max_records_per_file)
        writer.partitionBy(*self.partition_cols).parquet(staging)
        pattern = staging + "/" + "/".join(f"{c}=*" for c in self.partition_cols) + "/part-*.parquet"
        for n, status in enumerate(fs.globStatus(self._path(pattern)) or []):
            src = status.getPath()
            parts, parent = [], src.getParent()
            for _ in self.partition_cols:
                parts.insert(0, parent.getName())
                parent = parent.getParent()
            target = self._path(f"{self.location}/{'/'.join(parts)}")
            fs.mkdirs(target)
            fs.rename(src, self._path(f"{target.toString()}/{self.prefix(batch_id)}{n:04d}.zstd.parquet"))
        fs.delete(self._path(staging), True)
        self.register(partitions if register is None else register)

    def register(self, partitions: Sequence[tuple], chunk: int = REGISTER_CHUNK) -> None:
        """Add these partitions to the metastore (one ALTER TABLE per ``chunk`` partitions)."""
        specs = [
            "PARTITION (" + ", ".join(f"{c}='{v}'" if isinstance(v, str) else f"{c}={v}"
                                      for c, v in zip(self.partition_cols, values)) + ")"
            for values in partitions
        ]
        for start in range(0, len(specs), chunk):
            self.spark.sql(f"ALTER TABLE {self.table} ADD IF NOT EXISTS {' '.join(specs[start:start + chunk])}")
