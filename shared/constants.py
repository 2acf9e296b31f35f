"""Constants both sides agree on. Units live in the names."""

API_PREFIX = "/api/v1"
COORDINATOR_WARNING_HEADER = "X-Coordinator-Warning"  # on `GET /hosts`: e.g. its disk is under the floor
AGENT_PREFIX = "/agent/v1"
SERVICES_PREFIX = "/services"  # a service is served at SERVICES_PREFIX/PROJECT/NAME/
AGENT_VERSION = "0.1.0"
# The agent protocol's version, sent on every agent request. A coordinator serves agents of its own major
# version whose minor is within one of its own, so a fleet upgrades one side at a time. An agent that sends
# no header speaks 1.0 (the protocol before the header existed).
PROTOCOL_HEADER = "Gpuctl-Protocol"
PROTOCOL_VERSION = "1.0"

DEFAULT_PORT = 8443
POLL_TIMEOUT_S = 30.0  # how long the coordinator holds a sync long poll with nothing to say
POLL_JITTER_FRACTION = 0.1  # every wait gets jitter, so a fleet never moves in step
SYNC_READ_MARGIN_S = 5.0  # an agent gives up on a long poll this long after the poll timeout (with jitter)
SYNC_INTERVAL_S = 0.25  # the shortest gap between two syncs of one agent (the server may raise it)
LOG_CHUNK_MAX_BYTES = 256 * 1024
METRICS_INTERVAL_S = (
    10.0  # how often agents read their devices (utilization, memory, ...); the server may change it
)
LOG_CAP_BYTES = 1024**3  # the coordinator keeps at most this much of one allocation's log: head and tail
LOG_FOLLOW_WAIT_S = 20.0  # how long a `logs -f` request waits for new bytes before answering empty
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # every body but a files archive's
MAX_FILES_ARCHIVE_BYTES = 64 * 1024 * 1024  # a job's `files:` as a tar.gz; read in chunks, never whole
FILES_CHUNK_BYTES = 256 * 1024
UPLOAD_QUOTA_BYTES = 1024**3  # stored files archives per project
MAX_ARRAY_TASKS = 10_000  # tasks in one job array (`submit --array`): one request may not flood the store
FAIR_SHARE_HALF_LIFE_S = 7 * 24 * 3600.0  # a project's GPU-hours weigh half as much a week later (fair share)
DISK_FLOOR_BYTES = 1024**3  # the coordinator refuses new submits and uploads with less free space
HOST_UNREACHABLE_AFTER_S = 30.0  # a host not seen for this long is unreachable: no new work there
LEADER_LEASE_S = (
    10.0  # coordinator replicas on PostgreSQL: a dead leader is replaced this long after its last renewal
)
HOST_LOST_AFTER_S = 600.0  # ... and past this, its allocations are lost (a retry policy may place them again)
AGENT_CERT_TTL_S = 7 * 24 * 3600
FILES_KEEP_S = 3600.0  # an uploaded archive that no live job names is deleted after this
# The ports a multi-node job's sshd listens on, one per job attempt, unlike any other live job's on its hosts
# (below Linux's ephemeral range, 32768 on, so no outgoing connection holds one; beside dstack's 10022)
JOB_SSH_PORT_FIRST = 10022
JOB_SSH_PORTS = 1000  # 10022-11021
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this
RETRY_DELAY_S = 10.0  # a retried job's next attempt waits this after a failure, doubling per failure...
RETRY_DELAY_MAX_S = 300.0  # ...up to this (Kubernetes' CrashLoopBackOff: 10 s to 5 min)
