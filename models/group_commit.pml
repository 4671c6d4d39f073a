/*
 * Grouped commits (docs/GROUP-COMMIT.md), explored exhaustively by spin for small sizes.
 *
 * One ordered partition of R records (positions 1..R), W workers that may hold its lease, L loaders that
 * may hold the loader lease. Workers stage batches and register them with the coordinator; a loader merges
 * every pending batch in one warehouse transaction (checkpoint compare-and-set per batch, ledger row per
 * batch, loader epoch fence), then marks the registry. Any process may crash between any two steps and
 * restart with only what is durable; leases may move at any time (expiry), leaving zombies that keep
 * acting until they notice. FAULTS bounds crashes and lease moves so that the search ends.
 *
 * Checked:
 *   - nothing doubled: no record's rows are merged twice (assert in the loader's transaction);
 *   - no acknowledgement before its merge: a worker acknowledges a record only once its rows are merged
 *     (assert at the acknowledgement);
 *   - nothing lost: every run ends with every record merged exactly once (the Done process; a run that
 *     wedges with records unmerged is an invalid end state).
 *
 * Run: scripts/model-check.sh (spin -a, cc -DSAFETY, ./pan; any error fails).
 */

#ifndef R
#define R 3
#endif
#ifndef W
#define W 2
#endif
#ifndef L
#define L 2
#endif
#ifndef FAULTS
#define FAULTS 2
#endif
#ifndef MAXREG
#define MAXREG 8
#endif
#define NONE 255

#define PENDING 0
#define MERGED 1
#define REFUSED 2

/* The warehouse: changed only inside the loader's one atomic transaction. */
byte ck = 0;                  /* the partition's checkpoint: last position merged */
byte merged[R + 1];           /* how many times record r's rows were merged */
byte fence = 0;               /* highest loader epoch that committed */
bool in_ledger[MAXREG];       /* the ledger holds registry entry i's batch */

/* The coordinator (DynamoDB, or the sink's own tables). */
byte lease_owner = 0;         /* the partition's lease: worker 1..W, 0 = none */
byte lease_epoch = 0;
byte loader_owner = 0;        /* the loader lease */
byte loader_epoch = 0;
byte nreg = 0;                /* registered staged batches, in registration order */
byte reg_prev[MAXREG];
byte reg_last[MAXREG];
byte reg_state[MAXREG];
byte npending = 0;            /* registered batches whose fate the registry does not hold yet */

byte faults = 0;

/* A fault (crash or lease expiry) may happen while fewer than FAULTS have. */
#define FAULT (faults < FAULTS)

/* Worker-local: this worker's batch ending at r has a fate in the registry (R ≤ 4). */
#define DECIDED(r) (r <= R && mine[r] != NONE && reg_state[mine[r]] != PENDING)
#define ANY_DECIDED (DECIDED(1) || DECIDED(2) || DECIDED(3) || DECIDED(4))

proctype Worker(byte id) {
    byte pos;        /* next batch starts after this position */
    byte mine[R + 2];/* registry entry of this worker's batch ending at r */
    byte r;
    byte i;

    /* Claim the lease: free, or taken from another worker whose lease expired (a fault). Waiting here for
       a lease another worker holds is a valid end. */
end_start:
    atomic {
        (lease_owner == 0 || lease_owner == id || FAULT) ->
        if
        :: lease_owner != 0 && lease_owner != id -> faults++
        :: else -> skip
        fi;
        lease_owner = id;
        lease_epoch++;
        pos = ck;    /* start from the warehouse checkpoint */
        r = 0;
        do
        :: r <= R + 1 -> mine[r] = NONE; r++
        :: else -> break
        od
    }
    do
    /* Stage the next batch (one record, files at deterministic keys) and register it. The lease is not
       checked here: a zombie registers too, and the checkpoint compare-and-set must stop it. */
    :: pos < R && nreg < MAXREG ->
        atomic {
            reg_prev[nreg] = pos;
            reg_last[nreg] = pos + 1;
            reg_state[nreg] = PENDING;
            mine[pos + 1] = nreg;
            nreg++;
            npending++;
            pos++
        }
    /* Learn a batch's fate from the coordinator. */
    :: atomic {
        ANY_DECIDED ->
        r = 1;
        do
        :: r <= R && mine[r] != NONE && reg_state[mine[r]] == MERGED ->
            /* Acknowledge (an SQS delete; for Kinesis and files the checkpoint is the acknowledgement). */
            assert(merged[r] == 1);      /* no acknowledgement before its merge */
            mine[r] = NONE;
            break
        :: r <= R && mine[r] != NONE && reg_state[mine[r]] == REFUSED ->
            mine[r] = NONE;
            r = NONE;                    /* the checkpoint moved under us: restart from it */
            break
        :: r <= R && !(mine[r] != NONE && reg_state[mine[r]] != PENDING) -> r++
        :: r > R -> break
        od
       }
       if
       :: r == NONE -> goto end_start
       :: else -> skip
       fi
    /* Crash: local state is lost; the lease stays until it expires (or is claimed again). */
    :: FAULT -> faults++; goto end_start
    /* Notice a lost lease (the renewal failed): stop, and claim again later. */
    :: lease_owner != id -> goto end_start
    /* Done: everything is merged. */
    :: ck == R -> break
    od
}

proctype Loader(byte id) {
    byte epoch;
    byte i;
    byte results[MAXREG];
    byte n;

end_start:
    atomic {
        (loader_owner == 0 || loader_owner == id || FAULT) ->
        if
        :: loader_owner != 0 && loader_owner != id -> faults++
        :: else -> skip
        fi;
        loader_owner = id;
        loader_epoch++;
        epoch = loader_epoch
    }
end_merge:
    do
    /* One warehouse transaction over every pending batch, in registration order. */
    :: atomic {
        npending > 0 ->
        n = nreg;
        i = 0;
        do
        :: i < MAXREG -> results[i] = NONE; i++
        :: else -> break
        od;
        if
        :: fence > epoch -> n = 0              /* a newer loader committed: this one is a zombie */
        :: else ->
            fence = epoch;
            i = 0;
            do
            :: i < n && reg_state[i] == PENDING && in_ledger[i] ->
                results[i] = MERGED; i++       /* merged by an earlier transaction */
            :: i < n && reg_state[i] == PENDING && !in_ledger[i] && reg_prev[i] == ck ->
                ck = reg_last[i];              /* checkpoint compare-and-set */
                merged[reg_last[i]]++;
                assert(merged[reg_last[i]] == 1);  /* nothing doubled */
                in_ledger[i] = true;
                results[i] = MERGED; i++
            :: i < n && reg_state[i] == PENDING && !in_ledger[i] && reg_prev[i] != ck ->
                results[i] = REFUSED; i++      /* another batch moved the checkpoint */
            :: i < n && reg_state[i] != PENDING -> i++
            :: i >= n -> break
            od
        fi
       }
       /* After the commit, the registry learns each batch's fate, one conditional write at a time; a crash
          may come between any two. */
       i = 0;
       do
       :: i < n && results[i] != NONE ->
           atomic {
               if
               :: reg_state[i] == PENDING -> reg_state[i] = results[i]; npending--
               :: else -> skip
               fi;
               i++
           }
       :: i < n && results[i] == NONE -> i++
       :: i < n && FAULT -> faults++; goto end_start
       :: i >= n -> break
       od
    :: FAULT -> faults++; goto end_start
    od
}

/* Nothing lost: once every worker and loader has nothing left to do, every record was merged once. */
proctype Done() {
    byte r = 1;
    ck == R;
    do
    :: r <= R -> assert(merged[r] == 1); r++
    :: else -> break
    od
}

init {
    byte i;
    atomic {
        i = 1;
        do
        :: i <= W -> run Worker(i); i++
        :: else -> break
        od;
        i = 1;
        do
        :: i <= L -> run Loader(i); i++
        :: else -> break
        od;
        run Done()
    }
}
