"""SQL of the coordination tables (instances, leases, lease_moves).

Every statement stands alone (one implicit transaction, no session state), so instances work
through a transaction-pooling PgBouncer. Times are the database's (`now()`), never a host's:
instances on machines with skewed clocks still agree on who holds what.
"""

from __future__ import annotations

# One row per instance and role: each role process heartbeats for itself.
HEARTBEAT = """
INSERT INTO instances (name, role, host, pid, started_at, heartbeat_at, stopped_at)
VALUES ($1, $2, $3, $4, now(), now(), NULL)
ON CONFLICT (name, role) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid,
    started_at = CASE WHEN instances.pid = EXCLUDED.pid AND instances.stopped_at IS NULL
                      THEN instances.started_at ELSE now() END,
    heartbeat_at = now(), stopped_at = NULL
"""

MARK_STOPPED = "UPDATE instances SET stopped_at = now() WHERE name = $1 AND role = $2"

# Instances whose process of this role ($2) is live: heartbeat within $1 seconds, not stopped.
LIVE_INSTANCES = """
SELECT name FROM instances
WHERE role = $2 AND heartbeat_at > now() - make_interval(secs => $1) AND stopped_at IS NULL
ORDER BY name
"""

ENSURE_RESOURCES = """
INSERT INTO leases (resource) SELECT unnest($1::text[]) ON CONFLICT (resource) DO NOTHING
"""

# Renew what $1 holds at these epochs; what does not come back was taken over.
RENEW = """
UPDATE leases SET expires_at = now() + make_interval(secs => $4), renewed_at = now()
FROM unnest($2::text[], $3::bigint[]) AS h(resource, epoch)
WHERE leases.resource = h.resource AND leases.epoch = h.epoch AND leases.holder = $1
RETURNING leases.resource
"""

# Take up to $3 of these resources that nobody holds, whose lease expired, or that this
# instance's name holds from a previous life (a role process restarted by its supervisor:
# the caller passes only resources it does not hold now). The preference order is a hash of
# resource and taker, so instances starting together reach for different resources first;
# SKIP LOCKED leaves a row another taker is busy with.
ACQUIRE = """
WITH candidate AS (
    SELECT resource, holder AS previous,
           holder IS NOT NULL AND (expires_at < now() OR holder = $1) AS expired
    FROM leases
    WHERE resource = ANY($2::text[])
      AND (holder IS NULL OR expires_at < now() OR holder = $1)
    ORDER BY md5(resource || $1)
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE leases l
    SET holder = $1, epoch = l.epoch + 1, expires_at = now() + make_interval(secs => $4),
        acquired_at = now(), renewed_at = now()
    FROM candidate c WHERE l.resource = c.resource
    RETURNING l.resource, l.epoch, c.previous, c.expired
), moved AS (
    INSERT INTO lease_moves (resource, from_instance, to_instance, epoch, reason)
    SELECT resource, previous, $1, epoch,
           CASE WHEN expired THEN 'expired' ELSE 'free' END FROM taken
)
SELECT resource, epoch, previous, expired FROM taken
"""

# Instances on this host ($1) other than this one ($2), with their processes' ids: those
# whose process is gone died without giving their leases back.
SAME_HOST_INSTANCES = """
SELECT name, role, pid FROM instances
WHERE host = $1 AND name <> $2 AND stopped_at IS NULL
"""

# An instance (of a role) known dead: stopped, and its leases expire now.
BURY = """
WITH stopped AS (
    UPDATE instances SET stopped_at = now() WHERE name = $1 AND role = $2 AND pid = $3
    RETURNING name
)
UPDATE leases SET expires_at = now()
WHERE holder IN (SELECT name FROM stopped) AND expires_at > now() AND resource = ANY($4::text[])
"""

# Who holds how many of these resources right now (unexpired leases).
HOLDER_COUNTS = """
SELECT holder, count(*)::int AS held FROM leases
WHERE resource = ANY($1::text[]) AND holder IS NOT NULL AND expires_at > now()
GROUP BY holder
"""

# Give back one lease (rebalancing, stopping): free at once, so the next taker need not wait.
RELEASE = """
WITH released AS (
    UPDATE leases SET holder = NULL, expires_at = now()
    WHERE resource = $2 AND holder = $1 AND epoch = $3
    RETURNING resource, epoch
)
INSERT INTO lease_moves (resource, from_instance, to_instance, epoch, reason)
SELECT resource, $1, NULL, epoch, $4 FROM released
RETURNING resource
"""

# The fencing check a singleton runs inside its own transaction: the row lock makes a taker
# wait for this transaction, and a lease taken over (new epoch) or expired fails it.
FENCE = """
SELECT 1 FROM leases
WHERE resource = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()
FOR SHARE
"""

# -- visibility ----------------------------------------------------------------------------------

INSTANCES = """
SELECT name, role, host, pid, started_at, heartbeat_at, stopped_at,
       heartbeat_at > now() - make_interval(secs => $1) AND stopped_at IS NULL AS live
FROM instances ORDER BY name, role
"""

LEASES = """
SELECT resource, holder, epoch, expires_at, acquired_at, expires_at > now() AS valid
FROM leases ORDER BY resource
"""

RECENT_MOVES = """
SELECT at, resource, from_instance, to_instance, epoch, reason
FROM lease_moves ORDER BY id DESC LIMIT $1
"""

FORGET_OLD_MOVES = "DELETE FROM lease_moves WHERE at < now() - make_interval(days => $1)"
