"""The store's schema, as migrations run in order at open (`PRAGMA user_version` counts them)."""

MIGRATIONS: list[str] = [
    # 1: the walking skeleton
    """
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        inventory TEXT,
        generation TEXT NOT NULL DEFAULT '',
        desired_index INTEGER NOT NULL DEFAULT 1,
        last_seen REAL,
        status TEXT NOT NULL DEFAULT 'ready',
        created_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        submitted_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE allocations (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        host_id TEXT NOT NULL REFERENCES hosts(id),
        blocks TEXT NOT NULL,
        gpus TEXT NOT NULL,
        cpus TEXT NOT NULL,
        memory_mib INTEGER NOT NULL,
        desired TEXT NOT NULL DEFAULT 'run',
        state TEXT NOT NULL DEFAULT 'starting',
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        final_log_size INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX allocations_host ON allocations(host_id, state);
    CREATE INDEX allocations_job ON allocations(job_id);
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: identity: projects, users (their tokens), join tokens, issued certificates, fleets
    """
    CREATE TABLE projects (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
    INSERT INTO projects(name, created_at) VALUES ('default', 0);
    ALTER TABLE tokens ADD COLUMN project TEXT;
    ALTER TABLE jobs ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX jobs_project ON jobs(project, seq);
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        fleet TEXT NOT NULL,
        labels TEXT NOT NULL,
        expires_at REAL NOT NULL,
        uses_left INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        host_id TEXT NOT NULL,
        not_after REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX certs_host ON certs(host_id);
    ALTER TABLE hosts ADD COLUMN fleet TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE fleets (name TEXT PRIMARY KEY, projects TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL)
    """,
    # 3: which project stored which files archive (its upload quota); project secrets, encrypted
    """
    CREATE TABLE uploads (
        project TEXT NOT NULL,
        archive_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        uploaded_at REAL NOT NULL,
        PRIMARY KEY (project, archive_id)
    );
    CREATE INDEX uploads_archive ON uploads(archive_id);
    CREATE TABLE secrets (
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (project, name)
    )
    """,
    # 4: attempts (a retry is a new allocation), their times and why the coordinator ended one; drains
    """
    ALTER TABLE allocations ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE allocations ADD COLUMN started_at REAL;
    ALTER TABLE allocations ADD COLUMN finished_at REAL;
    ALTER TABLE allocations ADD COLUMN interrupted TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN retry_since REAL
    """,
    # 5: job arrays (`submit --array`): one row per array, one job row per task with its array and index
    """
    CREATE TABLE arrays (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL,
        indices TEXT NOT NULL,
        task_count INTEGER NOT NULL,
        min_index INTEGER NOT NULL,
        max_index INTEGER NOT NULL,
        task_limit INTEGER NOT NULL,
        submitted_at REAL NOT NULL
    );
    CREATE INDEX arrays_project ON arrays(project, submitted_at);
    ALTER TABLE jobs ADD COLUMN array_id TEXT REFERENCES arrays(id);
    ALTER TABLE jobs ADD COLUMN array_index INTEGER;
    CREATE UNIQUE INDEX jobs_array ON jobs(array_id, array_index);
    CREATE INDEX jobs_array_status ON jobs(array_id, status)
    """,
    # 6: scheduled tasks (`schedule: {cron: ...}`): one row per schedule, each run an ordinary job naming it.
    # `fired_for` is the latest cron time handled (run or skipped), written in the run's own transaction,
    # so that no time runs twice across restarts; `next_at` is the next time after it (the beat's index).
    """
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL,
        spec TEXT NOT NULL,
        fired_for REAL NOT NULL,
        next_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        stopped INTEGER NOT NULL DEFAULT 0,
        submitted_at REAL NOT NULL
    );
    CREATE INDEX schedules_due ON schedules(stopped, next_at);
    CREATE INDEX schedules_project ON schedules(project, submitted_at);
    ALTER TABLE jobs ADD COLUMN schedule_id TEXT REFERENCES schedules(id);
    CREATE INDEX jobs_schedule ON jobs(schedule_id, seq)
    """,
    # 7: per-project quotas (NULL: no limit); the queue's reads of a project's waiting jobs, and fair
    # share's of the allocations that ended since its last look
    """
    ALTER TABLE projects ADD COLUMN quota_gpus INTEGER;
    ALTER TABLE projects ADD COLUMN quota_jobs INTEGER;
    CREATE INDEX jobs_project_status ON jobs(project, status);
    CREATE INDEX jobs_project_queue ON jobs(project, priority DESC, seq)
        WHERE status IN ('submitted','pending','retrying');
    CREATE INDEX allocations_finished ON allocations(finished_at)
    """,
    # 8: multi-node jobs: one allocation per node of an attempt, each with its rank (0 for every older one)
    """
    ALTER TABLE allocations ADD COLUMN node INTEGER NOT NULL DEFAULT 0
    """,
    # 9: the port of a multi-node job's sshd on each of its hosts (0: none), the same for every node of an
    # attempt and unlike any other live allocation's on those hosts
    """
    ALTER TABLE allocations ADD COLUMN ssh_port INTEGER NOT NULL DEFAULT 0
    """,
    # 10: fleets' settings as dstack's fleet files write them (`placement: cluster`, `preemption: true`), and
    # the job a preempted allocation stops for, until it has ended: that job waits for it, and preempts no more
    """
    ALTER TABLE fleets ADD COLUMN placement TEXT NOT NULL DEFAULT 'any';
    ALTER TABLE fleets ADD COLUMN preemption INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE allocations ADD COLUMN stopping_for TEXT;
    CREATE INDEX allocations_stopping_for ON allocations(stopping_for) WHERE stopping_for IS NOT NULL
    """,
    # 11: the audit log of reaching into jobs (`gpuctl exec`): who, which job and node, when, and how it ended
    # (ended_at NULL: still open, or cut by a coordinator restart)
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        who TEXT NOT NULL,
        project TEXT NOT NULL,
        job_id TEXT NOT NULL,
        node INTEGER NOT NULL,
        host_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        command TEXT NOT NULL,
        ended_at REAL,
        exit_code INTEGER,
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_job ON audit(job_id, id)
    """,
    # 12: the devices a host's agent reported unhealthy since its last undrain (JSON list of GpuHealth): their
    # blocks take no new work, and stay so when the agent stops reporting them until an operator undrains
    """
    ALTER TABLE hosts ADD COLUMN unhealthy TEXT NOT NULL DEFAULT '[]'
    """,
    # 13: hosts' statuses without their rows (`/metrics`): `status` comes after the 3.6 KiB inventory, and
    # reading it walked every inventory's overflow pages (35-40 ms for 10,000 hosts, python -m bench.scrape)
    """
    CREATE INDEX hosts_status ON hosts(status, id)
    """,
    # 14: job accounting (`gpuctl usage`): who submitted each job (`submitted_by`: `user` is a keyword of SQL; a
    # schedule's runs count as its submitter's), and each allocation's device readings folded
    # (coordinator/accounting.py): its GPUs' peak memory, and their utilization as a sum of percent x seconds
    # over the seconds it covers (a time-weighted mean)
    """
    ALTER TABLE jobs ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE schedules ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';
    CREATE TABLE allocation_readings (
        allocation_id TEXT PRIMARY KEY REFERENCES allocations(id),
        peak_memory_mib INTEGER,
        utilization_pct_s REAL NOT NULL DEFAULT 0,
        utilization_s REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_finished ON jobs(finished_at)
    """,
    # 15: several coordinators on one PostgreSQL (unused on SQLite, where one coordinator is all there is):
    # the leadership lease, its epoch and holder, in the database's clock (coordinator/leader.py); and the
    # fingerprints of the keys every replica must be given alike, the CA's and the secrets' (cluster_keys.py)
    """
    CREATE TABLE leadership (
        id INTEGER PRIMARY KEY,
        epoch BIGINT NOT NULL,
        holder TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL
    );
    INSERT INTO leadership (id, epoch, holder, lease_until) VALUES (1, 0, '', 0);
    CREATE TABLE cluster_keys (
        name TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL
    )
    """,
]
