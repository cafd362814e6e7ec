"""registry: on PostgreSQL each statement checks its units' orders once, set-based; no index of units by order

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

PostgreSQL's own foreign key from registryunit.order_id to registryorder checks each new or changed unit
on its own (a query of its own a unit): for a million new units that was 3 s of the import's 6 s of server
time. The same rule is kept here by statement triggers, each of which checks every row of its statement
with a few set-based queries over the statement's transition table:

- inserting or updating units: each distinct order of the statement's units is locked FOR KEY SHARE, as
  the foreign key's own check locks it (a delete of the order waits for this transaction to end, and then
  finds its units), and one missing is an error;
- deleting orders or changing their key: an order no longer there that units still name is an error
  (refused outside READ COMMITTED, the bot's isolation level: at REPEATABLE READ or SERIALIZABLE the
  statement could not see the units of a transaction committed after it began);
- emptying registryorder with TRUNCATE: an error while units are left.

The errors are the constraint's: SQLSTATE 23503 (foreign_key_violation), 0A000 for the TRUNCATE. SQLite keeps its
declared foreign key: its check is a cheap look-up of the order's primary key.

No query reads units by order (look-ups go by serial), so ix_registryunit_order_id only made each import
insert a second index entry a unit (0.6 s of server time for a million on PostgreSQL, 0.3 s on SQLite);
the check above for deleted orders reads the units once a statement instead (SQLite's, once a deleted order;
the bot deletes none).
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The foreign key's name; the checks below raise its messages under it, so that an error reads as it did.
_FK = "registryunit_order_id_fkey"

_UNITS_CHECK = """
CREATE FUNCTION registryunit_orders_exist() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    wanted text[];
    locked bigint;
    missing text;
BEGIN
    SELECT array_agg(order_id) INTO wanted FROM (SELECT DISTINCT order_id FROM new_units) AS keys;
    PERFORM FROM registryorder WHERE order_id = ANY (wanted) FOR KEY SHARE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < coalesce(cardinality(wanted), 0) THEN
        SELECT min(key) INTO missing FROM unnest(wanted) AS key
        WHERE NOT EXISTS (SELECT FROM registryorder WHERE order_id = key);
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "registryunit" violates foreign key constraint "registryunit_order_id_fkey"',
            DETAIL = format('Key (order_id)=(%s) is not present in table "registryorder".', missing),
            TABLE = 'registryunit', CONSTRAINT = 'registryunit_order_id_fkey';
    END IF;
    RETURN NULL;
END
$$
"""

_ORDERS_CHECK = """
CREATE FUNCTION registryorder_keep_referenced() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    gone text[];
    referenced text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT FROM registryunit) THEN
            RAISE feature_not_supported USING
                MESSAGE = 'cannot truncate a table referenced in a foreign key constraint',
                DETAIL = 'Table "registryunit" references "registryorder".',
                HINT = 'Truncate table "registryunit" at the same time.';
        END IF;
        RETURN NULL;
    END IF;
    SELECT array_agg(order_id) INTO gone FROM old_orders
    WHERE NOT EXISTS (SELECT FROM registryorder WHERE registryorder.order_id = old_orders.order_id);
    IF gone IS NULL THEN
        RETURN NULL;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE feature_not_supported USING
            MESSAGE = 'registryorder: delete or re-key orders at READ COMMITTED',
            DETAIL = 'Units committed after this transaction began would not be seen by its check.';
    END IF;
    SELECT order_id INTO referenced FROM registryunit WHERE order_id = ANY (gone) LIMIT 1;
    IF referenced IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'update or delete on table "registryorder" violates foreign key constraint "registryunit_order_id_fkey" on table "registryunit"',
            DETAIL = format('Key (order_id)=(%s) is still referenced from table "registryunit".', referenced),
            TABLE = 'registryorder', CONSTRAINT = 'registryunit_order_id_fkey';
    END IF;
    RETURN NULL;
END
$$
"""

# The check each table's triggers run, and the triggers: (table, event, transition table). A trigger with a
# transition table has one event; each is named after its function and event.
_FUNCTIONS = {"registryunit": "registryunit_orders_exist", "registryorder": "registryorder_keep_referenced"}
_TRIGGERS = (
    ("registryunit", "INSERT", "NEW TABLE AS new_units"),
    ("registryunit", "UPDATE", "NEW TABLE AS new_units"),
    ("registryorder", "DELETE", "OLD TABLE AS old_orders"),
    ("registryorder", "UPDATE", "OLD TABLE AS old_orders"),
    ("registryorder", "TRUNCATE", None),
)


def _trigger(table: str, event: str) -> str:
    return f"{_FUNCTIONS[table]}_{event.lower()}"


def upgrade() -> None:
    with op.batch_alter_table("registryunit", schema=None) as batch_op:
        batch_op.drop_index("ix_registryunit_order_id")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint(_FK, "registryunit", type_="foreignkey")
    op.execute(_UNITS_CHECK)
    op.execute(_ORDERS_CHECK)
    for table, event, transition in _TRIGGERS:
        referencing = f"REFERENCING {transition} " if transition else ""
        op.execute(
            f"CREATE TRIGGER {_trigger(table, event)} AFTER {event} ON {table} {referencing}"
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTIONS[table]}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, event, _ in reversed(_TRIGGERS):
            op.execute(f"DROP TRIGGER {_trigger(table, event)} ON {table}")
        for function in _FUNCTIONS.values():
            op.execute(f"DROP FUNCTION {function}()")
        op.create_foreign_key(_FK, "registryunit", "registryorder", ["order_id"], ["order_id"])
    with op.batch_alter_table("registryunit", schema=None) as batch_op:
        batch_op.create_index("ix_registryunit_order_id", ["order_id"], unique=False)
