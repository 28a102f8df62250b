"""Schema migrations of the lease store (:mod:`dstm_orch.store`), in order.

Migration N takes ``PRAGMA user_version`` from N-1 to N; a file is never edited after
it shipped, only followed by a new one.
"""

LAYOUT_CONFLICT = "the address has active leases of another port-set layout"
EVENT_OUT_OF_ORDER = "an event of a lease is older than the start or the last event of its lease"
END_BEFORE_START = "a lease cannot end before it starts"

ALLOCATE_EVENT_TRIGGER = """
CREATE TRIGGER leases_allocate_event AFTER INSERT ON leases
BEGIN
    INSERT INTO lease_events (lease_id, at, event, end_at, node_ipv6)
    VALUES (NEW.id, NEW.start_at, 'allocate', NEW.end_at, NEW.node_ipv6);
END
"""
"""The database writes a lease's 'allocate' event with the lease (migration 4; again
after migration 7 rebuilds ``lease_events``)."""

EVENTS_IN_ORDER_TRIGGER = f"""
CREATE TRIGGER lease_events_in_order BEFORE INSERT ON lease_events
WHEN NEW.at < (SELECT start_at FROM leases WHERE id = NEW.lease_id)
     OR NEW.at < (SELECT at FROM lease_events INDEXED BY lease_events_lease
                  WHERE lease_id = NEW.lease_id ORDER BY id DESC LIMIT 1)
BEGIN
    SELECT RAISE(ABORT, '{EVENT_OUT_OF_ORDER}');
END
"""
"""A lease's events are never older than its start or its last event (migration 4;
again after migration 7)."""

APPLICATION_ID = 0x4453544D
"""``PRAGMA application_id`` of a dstm-orch lease store ("DSTM" in ASCII), set by
migration 4; a file with another non-zero id belongs to another application."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE leases (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            node        TEXT    NOT NULL,
            node_ipv6   TEXT    NOT NULL,
            ipv4        INTEGER NOT NULL CHECK (ipv4 BETWEEN 0 AND 4294967295),
            psid_offset INTEGER NOT NULL DEFAULT 0,
            psid_len    INTEGER NOT NULL DEFAULT 0,
            psid        INTEGER NOT NULL DEFAULT 0,
            pool        TEXT    NOT NULL,
            tep         TEXT    NOT NULL,
            tep_ipv6    TEXT    NOT NULL,
            start_at    INTEGER NOT NULL,
            end_at      INTEGER,
            lifetime    INTEGER CHECK (lifetime > 0),
            state       TEXT    NOT NULL CHECK (state IN ('active', 'revoked', 'expired')),
            ended_at    INTEGER,
            CHECK ((end_at IS NULL) = (lifetime IS NULL)),
            CHECK ((state = 'active') = (ended_at IS NULL))
        )
        """,
        "CREATE UNIQUE INDEX leases_active_ipv4 ON leases (ipv4, psid) WHERE state = 'active'",
        "CREATE UNIQUE INDEX leases_active_node ON leases (node) WHERE state = 'active'",
        "CREATE INDEX leases_due ON leases (end_at) WHERE state = 'active'",
        "CREATE INDEX leases_ipv4 ON leases (ipv4, ended_at)",
        "CREATE INDEX leases_node ON leases (node, id)",
        "CREATE INDEX leases_ended ON leases (ended_at)",
        """
        CREATE TABLE lease_events (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            lease_id INTEGER NOT NULL REFERENCES leases (id),
            at       INTEGER NOT NULL,
            event    TEXT    NOT NULL
                     CHECK (event IN ('allocate', 'renew', 'revoke', 'expire')),
            end_at   INTEGER
        )
        """,
        "CREATE INDEX lease_events_lease ON lease_events (lease_id, id)",
        """
        CREATE TRIGGER leases_are_history BEFORE DELETE ON leases
        BEGIN
            SELECT RAISE(ABORT, 'leases are history and are never deleted');
        END
        """,
    ),
    # 2: the ports option and roaming. Events gain the node's IPv6 address after the
    # event (and before it, for a 'move'); the port set of a lease is checked and
    # frozen, and an address holds active leases of one (offset, length) layout only,
    # so that the unique (ipv4, psid) index forbids exactly the overlapping port sets.
    (
        """
        CREATE TABLE lease_events_v2 (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            lease_id  INTEGER NOT NULL REFERENCES leases (id),
            at        INTEGER NOT NULL,
            event     TEXT    NOT NULL
                      CHECK (event IN ('allocate', 'renew', 'revoke', 'expire', 'move')),
            end_at    INTEGER,
            node_ipv6 TEXT,
            old_ipv6  TEXT,
            CHECK ((event = 'move') = (old_ipv6 IS NOT NULL))
        )
        """,
        """
        INSERT INTO lease_events_v2 (id, lease_id, at, event, end_at, node_ipv6)
        SELECT e.id, e.lease_id, e.at, e.event, e.end_at, l.node_ipv6
        FROM lease_events AS e JOIN leases AS l ON l.id = e.lease_id
        """,
        "DROP TABLE lease_events",
        "ALTER TABLE lease_events_v2 RENAME TO lease_events",
        "CREATE INDEX lease_events_lease ON lease_events (lease_id, id)",
        """
        CREATE INDEX leases_active_layout ON leases (psid_offset, psid_len, ipv4, psid)
        WHERE state = 'active'
        """,
        """
        CREATE INDEX leases_active_psid ON leases (psid_offset, psid_len, psid, ipv4)
        WHERE state = 'active'
        """,
        "CREATE INDEX leases_active_node_ipv6 ON leases (node_ipv6) WHERE state = 'active'",
        """
        CREATE TRIGGER leases_port_set_valid BEFORE INSERT ON leases
        WHEN NEW.psid_offset NOT BETWEEN 0 AND 16 OR NEW.psid_len NOT BETWEEN 0 AND 16
             OR NEW.psid_offset + NEW.psid_len > 16
             OR NEW.psid NOT BETWEEN 0 AND (1 << NEW.psid_len) - 1
        BEGIN
            SELECT RAISE(ABORT, 'invalid port set: offset + length over 16 or psid too big');
        END
        """,
        # All active leases of an address share one layout (this trigger from the
        # start; leases of version 1 are all whole addresses, one per address; layouts
        # never change and ended leases never return), so checking one of them is
        # enough: one index seek, not one row per PSID.
        f"""
        CREATE TRIGGER leases_one_layout_per_address BEFORE INSERT ON leases
        WHEN NEW.state = 'active' AND (
            SELECT psid_offset != NEW.psid_offset OR psid_len != NEW.psid_len
            FROM leases INDEXED BY leases_active_ipv4
            WHERE state = 'active' AND ipv4 = NEW.ipv4 LIMIT 1)
        BEGIN
            SELECT RAISE(ABORT, '{LAYOUT_CONFLICT}');
        END
        """,
        """
        CREATE TRIGGER leases_port_set_frozen
        BEFORE UPDATE OF ipv4, psid_offset, psid_len, psid ON leases
        WHEN NEW.ipv4 != OLD.ipv4 OR NEW.psid_offset != OLD.psid_offset
             OR NEW.psid_len != OLD.psid_len OR NEW.psid != OLD.psid
        BEGIN
            SELECT RAISE(ABORT, 'the address and port set of a lease never change');
        END
        """,
        """
        CREATE TRIGGER leases_never_reactivate BEFORE UPDATE OF state ON leases
        WHEN OLD.state != 'active' AND NEW.state = 'active'
        BEGIN
            SELECT RAISE(ABORT, 'an ended lease never becomes active again');
        END
        """,
    ),
    (
        # Pushes to devices (NETCONF TEPs): applied or not, so that an unconfirmed
        # commit that the device rolled back is on record (README, "Router TEPs over NETCONF").
        """
        CREATE TABLE device_pushes (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            at INTEGER NOT NULL,
            applied INTEGER NOT NULL CHECK (applied IN (0, 1)),
            version INTEGER,
            detail TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX device_pushes_device ON device_pushes (device, id)",
    ),
    # 4: the store identifies itself, and times are kept in order by the database: a
    # lease never ends before it starts and a lease's events never go back in time
    # (a writer reads the time once it holds the write lock, so a writer that waited
    # never records a time older than what the holder committed). One active lease
    # per node IPv6 address: a TEP maps each IPv6 address to one lease.
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        # Only ended leases are looked up by their end: an active lease (ended_at NULL)
        # costs no entry, so an allocation writes one index page less.
        "DROP INDEX leases_ended",
        "CREATE INDEX leases_ended ON leases (ended_at) WHERE ended_at IS NOT NULL",
        # The 'allocate' event is written by the database with the lease itself.
        ALLOCATE_EVENT_TRIGGER,
        "DROP INDEX leases_active_node_ipv6",
        """
        CREATE UNIQUE INDEX leases_active_node_ipv6 ON leases (node_ipv6)
        WHERE state = 'active'
        """,
        f"""
        CREATE TRIGGER leases_end_after_start_insert BEFORE INSERT ON leases
        WHEN NEW.ended_at < NEW.start_at
        BEGIN
            SELECT RAISE(ABORT, '{END_BEFORE_START}');
        END
        """,
        f"""
        CREATE TRIGGER leases_end_after_start BEFORE UPDATE OF ended_at ON leases
        WHEN NEW.ended_at < NEW.start_at
        BEGIN
            SELECT RAISE(ABORT, '{END_BEFORE_START}');
        END
        """,
        EVENTS_IN_ORDER_TRIGGER,
    ),
    # 5: the push journal (dstm_orch.store.journal). A confirmed commit (RFC 6241
    # section 8.4) is written as pending, with its persist id and the instant the
    # device reverts on its own, before it is sent; it is settled (applied or not)
    # afterwards. A pending row that outlives its process is the record of the crash.
    (
        "ALTER TABLE device_pushes ADD COLUMN persist_id TEXT",
        "ALTER TABLE device_pushes ADD COLUMN deadline INTEGER",
        """
        ALTER TABLE device_pushes ADD COLUMN pending INTEGER NOT NULL DEFAULT 0
            CHECK (pending IN (0, 1) AND (pending = 0 OR (applied = 0 AND deadline NOT NULL)))
        """,
        "CREATE INDEX device_pushes_pending ON device_pushes (device) WHERE pending = 1",
    ),
    # 6: what each push made the device hold, as a digest of the device's intent
    # (dstm_orch.push.digest), so that an apply with nothing new for a device skips it.
    (
        "ALTER TABLE device_pushes ADD COLUMN intent_digest TEXT",
    ),
    # 7: a lease moved to another TEP (its pool moved, GitOps ``apply``) is a lease event
    # of its own, ``tep-move``, naming the TEP it left (``old_tep``), so that the history
    # shows it and a process following the event sequence (``serve``) pushes both TEPs.
    # SQLite cannot alter a CHECK: the table is rebuilt as in version 2, its id sequence
    # kept; the triggers that name it are dropped first and written again after.
    (
        "DROP TRIGGER leases_allocate_event",
        """
        CREATE TABLE lease_events_v7 (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            lease_id  INTEGER NOT NULL REFERENCES leases (id),
            at        INTEGER NOT NULL,
            event     TEXT    NOT NULL CHECK (event IN ('allocate', 'renew', 'revoke',
                                                        'expire', 'move', 'tep-move')),
            end_at    INTEGER,
            node_ipv6 TEXT,
            old_ipv6  TEXT,
            old_tep   TEXT,
            CHECK ((event = 'move') = (old_ipv6 IS NOT NULL)),
            CHECK ((event = 'tep-move') = (old_tep IS NOT NULL))
        )
        """,
        """
        INSERT INTO lease_events_v7 (id, lease_id, at, event, end_at, node_ipv6, old_ipv6)
        SELECT id, lease_id, at, event, end_at, node_ipv6, old_ipv6 FROM lease_events
        """,
        """
        UPDATE sqlite_sequence SET seq = max(seq, (SELECT seq FROM sqlite_sequence
                                                   WHERE name = 'lease_events'))
        WHERE name = 'lease_events_v7'
        """,
        "DROP TABLE lease_events",
        "ALTER TABLE lease_events_v7 RENAME TO lease_events",
        "CREATE INDEX lease_events_lease ON lease_events (lease_id, id)",
        ALLOCATE_EVENT_TRIGGER,
        EVENTS_IN_ORDER_TRIGGER,
    ),
    # 8: an allocation writes four pages fewer (issue 10).
    # - The history of an address and of a node is read from indexes of ended leases
    #   only (leases_ended_ipv4, leases_ended_node): an active lease is found by the
    #   partial unique indexes over active leases, which it is in anyway, and its
    #   entries in the ended indexes are written once, when it ends. Active whole
    #   addresses are counted in leases_active_layout, whose order for the layout (0, 0)
    #   and PSID 0 is the same; leases_active_psid keeps the port sets.
    # - Lease and event ids without AUTOINCREMENT: each insert updated sqlite_sequence
    #   (twice per allocation, one more page). Ids stay one more than the largest, never
    #   reused: leases and their events are never deleted (both refuse it now). SQLite
    #   cannot drop AUTOINCREMENT: both tables are rebuilt, rows and ids kept, the new
    #   lease_events referring to the new leases (RENAME updates the reference), then
    #   the indexes and triggers of versions 1-7 are written again.
    (
        """
        CREATE TABLE leases_v8 (
            id          INTEGER PRIMARY KEY,
            node        TEXT    NOT NULL,
            node_ipv6   TEXT    NOT NULL,
            ipv4        INTEGER NOT NULL CHECK (ipv4 BETWEEN 0 AND 4294967295),
            psid_offset INTEGER NOT NULL DEFAULT 0,
            psid_len    INTEGER NOT NULL DEFAULT 0,
            psid        INTEGER NOT NULL DEFAULT 0,
            pool        TEXT    NOT NULL,
            tep         TEXT    NOT NULL,
            tep_ipv6    TEXT    NOT NULL,
            start_at    INTEGER NOT NULL,
            end_at      INTEGER,
            lifetime    INTEGER CHECK (lifetime > 0),
            state       TEXT    NOT NULL CHECK (state IN ('active', 'revoked', 'expired')),
            ended_at    INTEGER,
            CHECK ((end_at IS NULL) = (lifetime IS NULL)),
            CHECK ((state = 'active') = (ended_at IS NULL))
        )
        """,
        """
        CREATE TABLE lease_events_v8 (
            id        INTEGER PRIMARY KEY,
            lease_id  INTEGER NOT NULL REFERENCES leases_v8 (id),
            at        INTEGER NOT NULL,
            event     TEXT    NOT NULL CHECK (event IN ('allocate', 'renew', 'revoke',
                                                        'expire', 'move', 'tep-move')),
            end_at    INTEGER,
            node_ipv6 TEXT,
            old_ipv6  TEXT,
            old_tep   TEXT,
            CHECK ((event = 'move') = (old_ipv6 IS NOT NULL)),
            CHECK ((event = 'tep-move') = (old_tep IS NOT NULL))
        )
        """,
        """
        INSERT INTO leases_v8 (id, node, node_ipv6, ipv4, psid_offset, psid_len, psid, pool,
                               tep, tep_ipv6, start_at, end_at, lifetime, state, ended_at)
        SELECT id, node, node_ipv6, ipv4, psid_offset, psid_len, psid, pool, tep, tep_ipv6,
               start_at, end_at, lifetime, state, ended_at FROM leases
        """,
        """
        INSERT INTO lease_events_v8 (id, lease_id, at, event, end_at, node_ipv6, old_ipv6,
                                     old_tep)
        SELECT id, lease_id, at, event, end_at, node_ipv6, old_ipv6, old_tep FROM lease_events
        """,
        "DROP TABLE lease_events",
        "DROP TABLE leases",
        "ALTER TABLE leases_v8 RENAME TO leases",
        "ALTER TABLE lease_events_v8 RENAME TO lease_events",
        "CREATE UNIQUE INDEX leases_active_ipv4 ON leases (ipv4, psid) WHERE state = 'active'",
        "CREATE UNIQUE INDEX leases_active_node ON leases (node) WHERE state = 'active'",
        """
        CREATE UNIQUE INDEX leases_active_node_ipv6 ON leases (node_ipv6)
        WHERE state = 'active'
        """,
        "CREATE INDEX leases_due ON leases (end_at) WHERE state = 'active'",
        """
        CREATE INDEX leases_active_layout ON leases (psid_offset, psid_len, ipv4, psid)
        WHERE state = 'active'
        """,
        """
        CREATE INDEX leases_active_psid ON leases (psid_offset, psid_len, psid, ipv4)
        WHERE state = 'active' AND psid_len > 0
        """,
        "CREATE INDEX leases_ended ON leases (ended_at) WHERE ended_at IS NOT NULL",
        "CREATE INDEX leases_ended_ipv4 ON leases (ipv4, ended_at) WHERE ended_at IS NOT NULL",
        "CREATE INDEX leases_ended_node ON leases (node, id) WHERE ended_at IS NOT NULL",
        "CREATE INDEX lease_events_lease ON lease_events (lease_id, id)",
        """
        CREATE TRIGGER leases_are_history BEFORE DELETE ON leases
        BEGIN
            SELECT RAISE(ABORT, 'leases are history and are never deleted');
        END
        """,
        """
        CREATE TRIGGER lease_events_are_history BEFORE DELETE ON lease_events
        BEGIN
            SELECT RAISE(ABORT, 'lease events are history and are never deleted');
        END
        """,
        """
        CREATE TRIGGER leases_port_set_valid BEFORE INSERT ON leases
        WHEN NEW.psid_offset NOT BETWEEN 0 AND 16 OR NEW.psid_len NOT BETWEEN 0 AND 16
             OR NEW.psid_offset + NEW.psid_len > 16
             OR NEW.psid NOT BETWEEN 0 AND (1 << NEW.psid_len) - 1
        BEGIN
            SELECT RAISE(ABORT, 'invalid port set: offset + length over 16 or psid too big');
        END
        """,
        f"""
        CREATE TRIGGER leases_one_layout_per_address BEFORE INSERT ON leases
        WHEN NEW.state = 'active' AND (
            SELECT psid_offset != NEW.psid_offset OR psid_len != NEW.psid_len
            FROM leases INDEXED BY leases_active_ipv4
            WHERE state = 'active' AND ipv4 = NEW.ipv4 LIMIT 1)
        BEGIN
            SELECT RAISE(ABORT, '{LAYOUT_CONFLICT}');
        END
        """,
        """
        CREATE TRIGGER leases_port_set_frozen
        BEFORE UPDATE OF ipv4, psid_offset, psid_len, psid ON leases
        WHEN NEW.ipv4 != OLD.ipv4 OR NEW.psid_offset != OLD.psid_offset
             OR NEW.psid_len != OLD.psid_len OR NEW.psid != OLD.psid
        BEGIN
            SELECT RAISE(ABORT, 'the address and port set of a lease never change');
        END
        """,
        """
        CREATE TRIGGER leases_never_reactivate BEFORE UPDATE OF state ON leases
        WHEN OLD.state != 'active' AND NEW.state = 'active'
        BEGIN
            SELECT RAISE(ABORT, 'an ended lease never becomes active again');
        END
        """,
        f"""
        CREATE TRIGGER leases_end_after_start_insert BEFORE INSERT ON leases
        WHEN NEW.ended_at < NEW.start_at
        BEGIN
            SELECT RAISE(ABORT, '{END_BEFORE_START}');
        END
        """,
        f"""
        CREATE TRIGGER leases_end_after_start BEFORE UPDATE OF ended_at ON leases
        WHEN NEW.ended_at < NEW.start_at
        BEGIN
            SELECT RAISE(ABORT, '{END_BEFORE_START}');
        END
        """,
        ALLOCATE_EVENT_TRIGGER,
        EVENTS_IN_ORDER_TRIGGER,
    ),
)
"""Schema migrations in order; migration N takes ``PRAGMA user_version`` from N-1 to N."""
