"""Row changes of a PostgreSQL table as events: a trigger the platform installs writes each change to an
outbox table, and the source reads the outbox, hands the rows to the sink, then deletes them.

Design choices and why:

- **An outbox, woken by NOTIFY.** LISTEN/NOTIFY alone loses every change made while nobody listens (a
  service restart, a paused trigger), and a NOTIFY payload is limited to 8000 bytes, which one wide
  row exceeds. So the table's trigger inserts the row into `stratolab.trigger_outbox` in the same
  transaction as the change (committed together, or not at all), and NOTIFY only says "trigger N has
  rows" (PostgreSQL folds identical notifications of one transaction into one, so a 10,000-row insert
  wakes the source once). The source also reads the outbox when it starts and every few seconds, in
  case a notification was missed while it reconnected.
- **Not logical decoding.** It would need `wal_level=logical` and a replication slot per consumer,
  which an administrator must configure and grant (REPLICATION), and a slot whose consumer went away
  keeps every WAL segment from then on until the disk is full. The outbox needs only the rights to
  create a trigger on the watched table, and what it holds is bounded by what is not yet stored.
- **Deleted after the sink returned, by id.** Rows are read in id order (500 at a time) and deleted by
  their ids once the sink has committed the events: a crash between the two sends them again, with the
  same event ids (`<database>:<trigger>:<outbox id>`), which the store recognises as duplicates.
  Deleting by id, not "everything up to the highest id", keeps a row that a slower transaction
  committed later with a lower id. Order is that of the inserts; transactions that overlap may commit
  in another order.
- **Identifiers checked twice.** Table names are plain identifiers (spec.TABLE_RE), and every one that
  goes into SQL is still quoted with `psycopg.sql.Identifier`.

The event: type `io.stratolab.postgres.insert|update|delete`, subject the table (`public.readings`),
data `{"op": "UPDATE", "table": "public.readings", "row": {...}, "old": {...}}` (`row` is the new row,
or the deleted one for DELETE; `old` is the row before an UPDATE, else null), the ordering key the
row's primary key value(s), the time the change was written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from stratolab.platform.backoff import backoff_waits
from stratolab.triggers.events import CloudEvent, new_event
from stratolab.triggers.sources.base import Source, SourceError, SourceSettings

log = logging.getLogger("stratolab.triggers")

CHANNEL = "stratolab_outbox"
SCHEMA = "stratolab"
#: outbox rows read per sink call
READ_LIMIT = 500
#: the safety-net read interval when no notification came (settings.extra["postgres_poll_s"])
DEFAULT_POLL_S = 5.0
#: a lock every installer takes, so two sources starting together do not race to create the outbox
INSTALL_LOCK = 0x5374_7261_746F

OUTBOX_DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {SCHEMA}.trigger_outbox (
    id bigserial primary key,
    trigger_id int not null,
    op text not null,
    tbl text not null,
    row jsonb,
    old jsonb,
    txid bigint not null,
    at timestamptz not null default now()
);
create index if not exists trigger_outbox_trigger on {SCHEMA}.trigger_outbox (trigger_id, id);
create or replace function {SCHEMA}.trigger_outbox_capture() returns trigger language plpgsql
-- runs with the rights of the role that installed it: other roles writing the watched table need no
-- grant on the outbox (their writes would fail otherwise), and a fixed search_path keeps it from
-- resolving names through a schema they control
security definer set search_path = pg_catalog, pg_temp as $$
declare
    tid int := TG_ARGV[0]::int;
begin
    insert into {SCHEMA}.trigger_outbox (trigger_id, op, tbl, row, old, txid)
    values (
        tid, TG_OP, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
        case when TG_OP = 'DELETE' then to_jsonb(OLD) else to_jsonb(NEW) end,
        case when TG_OP = 'UPDATE' then to_jsonb(OLD) end,
        txid_current()
    );
    perform pg_notify('{CHANNEL}', tid::text);
    return null;
end
$$;
"""


def trigger_name(trigger_id: int) -> str:
    return f"stratolab_trigger_{int(trigger_id)}"


def split_table(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def key_of(row: dict[str, Any] | None, primary_key: Sequence[str]) -> str | None:
    """The row's primary key value(s) as text (the ordering key), or None without one."""
    if not row or not primary_key or any(col not in row for col in primary_key):
        return None
    values = [row[col] if isinstance(row[col], str) else json.dumps(row[col]) for col in primary_key]
    return values[0] if len(values) == 1 else ",".join(values)


class PostgresSource(Source):
    kind = "postgres"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = str(self.spec.source["table"])
        self.operations = [op.upper() for op in self.spec.source.get("operations", ("INSERT", "UPDATE", "DELETE"))]
        self.primary_key: list[str] = []
        self.dbname = ""
        self.poll_s = float(self.settings.extra.get("postgres_poll_s", DEFAULT_POLL_S))
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def start(self) -> None:
        """Install the outbox and the table's trigger, read what waits, and listen for more."""
        conn = await _connect(self.settings)
        try:
            self.dbname = conn.info.dbname
            await install(conn, self.trigger_id, self.table, self.operations)
            self.primary_key = await primary_key_of(conn, self.table)
            await conn.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.spawn(self._run())

    async def stop(self) -> None:
        await super().stop()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def remove(self) -> None:
        """The trigger was deleted: drop the table's trigger and forget its outbox rows."""
        await remove_trigger(self.settings, self.trigger_id, self.table)

    async def _run(self) -> None:
        """Drain, wait for a notification (or the safety-net interval), drain again; reconnect when
        the connection drops."""
        waits = backoff_waits(start_wait=0.5, max_wait=30.0)
        while True:
            try:
                conn = self._conn or await self._reconnect()
                await self._drain(conn)
                self.error = None
                waits = backoff_waits(start_wait=0.5, max_wait=30.0)
                await self._wait_for_rows(conn)
            except asyncio.CancelledError:
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError, SourceError) as e:
                self.error = f"lost the connection to PostgreSQL ({_first_line(e)}); reconnecting"
                log.warning("postgres trigger %s: %s", self.trigger_id, self.error)
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
                await asyncio.sleep(next(waits))
            except Exception as e:  # the sink refused: the rows stay in the outbox for the next read
                self.error = f"events not stored ({_first_line(e)}); they stay in the outbox"
                log.warning("postgres trigger %s: %s", self.trigger_id, self.error)
                await asyncio.sleep(next(waits))

    async def _reconnect(self) -> psycopg.AsyncConnection[Any]:
        conn = await _connect(self.settings)
        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
        self._conn = conn
        return conn

    async def _wait_for_rows(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Return on a notification for this trigger, or when the safety-net interval ends."""
        ours = str(self.trigger_id)
        async for notify in conn.notifies(timeout=self.poll_s):
            if notify.payload == ours:
                return

    async def _drain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Hand every waiting outbox row of this trigger to the sink, in id order, deleting each batch
        only after the sink returned."""
        while True:
            cur = await conn.execute(
                f"select id, op, tbl, row, old, at from {SCHEMA}.trigger_outbox "
                "where trigger_id = %s order by id limit %s",
                (self.trigger_id, READ_LIMIT),
            )
            rows = await cur.fetchall()
            if not rows:
                return
            await self.sink([self._event(*row) for row in rows])
            self.received += len(rows)
            await conn.execute(
                f"delete from {SCHEMA}.trigger_outbox where trigger_id = %s and id = any(%s)",
                (self.trigger_id, [row[0] for row in rows]),
            )
            if len(rows) < READ_LIMIT:
                return

    def _event(self, outbox_id: int, op: str, table: str, row: dict[str, Any] | None,
               old: dict[str, Any] | None, at: datetime) -> CloudEvent:
        data = json.dumps({"op": op, "table": table, "row": row, "old": old}, separators=(",", ":"), default=str)
        return new_event(
            self.source_uri, f"io.stratolab.postgres.{op.lower()}", data.encode(), subject=table,
            id=f"{self.dbname}:{self.trigger_id}:{outbox_id}", key=key_of(row, self.primary_key), time=at,
        )


async def _connect(settings: SourceSettings) -> psycopg.AsyncConnection[Any]:
    if not settings.postgres_url:
        raise SourceError("PostgreSQL triggers are off on this platform: the administrator sets the triggers "
                          "service's postgres_url (STRATOLAB_TRIGGERS_POSTGRES_URL) to the database to watch")
    try:
        return await psycopg.AsyncConnection.connect(settings.postgres_url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise SourceError(f"cannot connect to the PostgreSQL database of triggers ({_first_line(e)})") from None


async def table_oid(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    """The table's oid; a SourceError naming the table and the database when there is none."""
    schema, name = split_table(table)
    cur = await conn.execute(
        "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')",
        (schema, name),
    )
    found = await cur.fetchone()
    if found is None:
        raise SourceError(f"no table {schema}.{name} in {conn.info.dbname}: create it first, or correct the "
                          "trigger's source.table", status=404)
    return int(found[0])


async def primary_key_of(conn: psycopg.AsyncConnection[Any], table: str) -> list[str]:
    """The table's primary key columns in key order ([] without a primary key)."""
    oid = await table_oid(conn, table)
    cur = await conn.execute(
        "select a.attname from pg_index i "
        "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[]) "
        "where i.indrelid = %s and i.indisprimary "
        "order by array_position(i.indkey::int2[], a.attnum)",
        (oid,),
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def install(conn: psycopg.AsyncConnection[Any], trigger_id: int, table: str, operations: Sequence[str]) -> None:
    """Create the outbox (once per database) and the table's trigger for `operations`, replacing an
    earlier one of the same trigger (its operations may have changed). Idempotent."""
    ops = [op for op in ("INSERT", "UPDATE", "DELETE") if op in {o.upper() for o in operations}]
    if not ops:
        raise SourceError("a PostgreSQL trigger needs at least one of INSERT, UPDATE, DELETE", status=400)
    schema, name = split_table(table)
    try:
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(%s)", (INSTALL_LOCK,))
            await table_oid(conn, table)
            await conn.execute(OUTBOX_DDL)
            target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            verb = "create or replace trigger"
            if conn.info.server_version < 140000:  # no "create or replace trigger" before PostgreSQL 14
                await conn.execute(sql.SQL("drop trigger if exists {} on {}").format(
                    sql.Identifier(trigger_name(trigger_id)), target))
                verb = "create trigger"
            create = sql.SQL(
                verb + " {trigger} after {events} on {target} "
                "for each row execute function {outbox}.trigger_outbox_capture({arg})"
            ).format(
                trigger=sql.Identifier(trigger_name(trigger_id)),
                events=sql.SQL(" or ").join(sql.SQL(op) for op in ops),
                target=target, outbox=sql.Identifier(SCHEMA), arg=sql.Literal(str(int(trigger_id))),
            )
            await conn.execute(create)
    except psycopg.errors.InsufficientPrivilege as e:
        raise SourceError(f"the triggers service may not install a trigger on {schema}.{name} "
                          f"({_first_line(e)}): the administrator grants it TRIGGER on the table", status=403) from None


async def remove_trigger(settings: SourceSettings, trigger_id: int, table: str) -> None:
    """Drop the table's trigger (if the table is still there) and delete the trigger's outbox rows."""
    schema, name = split_table(table)
    conn = await _connect(settings)
    try:
        try:
            await conn.execute(sql.SQL("drop trigger if exists {} on {}.{}").format(
                sql.Identifier(trigger_name(trigger_id)), sql.Identifier(schema), sql.Identifier(name)))
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            pass  # the table went first: its triggers went with it
        try:
            await conn.execute(f"delete from {SCHEMA}.trigger_outbox where trigger_id = %s", (trigger_id,))
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            pass  # no outbox was ever installed in this database
    finally:
        await conn.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
