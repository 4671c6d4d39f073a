/*
 * Grouped commits (docs/GROUP-COMMIT.md), explored exhaustively by spin for small sizes.
 *
 * One ordered partition of R records (positions 1..R), W workers that may hold its lease, L loaders that
 * may hold the loader lease. Workers stage batches of one or two records and register them with the
 * coordinator under the batch's id, which is what the implementation derives it from: the partition and the
 * positions the batch spans (a worker that re-reads the same range produces the same id). Registering an id
 * that is pending or merged changes nothing (a retry); registering an id that is refused makes it pending
 * again (W5). A loader merges the pending batches in one warehouse transaction (checkpoint compare-and-set
 * per batch, ledger row per batch id, loader epoch fence), meeting them in any order, then marks the
 * registry, over pending only. Any process may crash between any two steps and restart with only what is
 * durable; leases may move at any time (expiry), leaving zombies that keep acting until they notice.
 * FAULTS bounds crashes and lease moves so that the search ends.
 *
 * Checked (safety, scripts/model-check.sh):
 *   - nothing doubled: no record's rows are merged twice (assert in the loader's transaction);
 *   - no acknowledgement before its merge: a worker acknowledges a record only once its rows are merged
 *     (assert at the acknowledgement);
 *   - nothing lost: every run that stops ends with every record merged exactly once (the Done process; a
 *     run that wedges with records unmerged is an invalid end state).
 * Checked (liveness, with weak fairness): every run merges the whole partition (ltl all_merged) — no
 * cycle of refusals and re-reads can go on for ever once faults stop (a refusal that stuck to its batch id
 * was such a cycle: the mutant "refusal sticks to the id" must fail it).
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
#define NONE 255

/* A batch's id: the positions it spans, prev (exclusive) to last (inclusive). */
#define NID ((R + 1) * (R + 1))
#define ID(p, l) ((p) * (R + 1) + (l))
#define PREV(b) ((b) / (R + 1))
#define LAST(b) ((b) % (R + 1))

#define ABSENT 0
#define PENDING 1
#define MERGED 2
#define REFUSED 3

/* The warehouse: changed only inside the loader's one atomic transaction. */
byte ck = 0;                  /* the partition's checkpoint: last position merged */
byte merged[R + 1];           /* how many times record r's rows were merged */
byte fence = 0;               /* highest loader epoch that committed */
bool in_ledger[NID];          /* the ledger holds batch b */

/* The coordinator (DynamoDB, or the sink's own tables). */
byte lease_owner = 0;         /* the partition's lease: worker 1..W, 0 = none */
byte lease_epoch = 0;
byte loader_owner = 0;        /* the loader lease */
byte loader_epoch = 0;
byte reg_state[NID];          /* the registry: batch id → ABSENT, PENDING, MERGED or REFUSED */
byte npending = 0;            /* ids in the registry as PENDING */

byte faults = 0;

/* A fault (crash or lease expiry) may happen while fewer than FAULTS have. */
#define FAULT (faults < FAULTS)

/* Worker-local: this worker's batch ending at r has a fate in the registry (R ≤ 4). */
#define DECIDED(r) (r <= R && mine[r] != NONE && (reg_state[mine[r]] == MERGED || reg_state[mine[r]] == REFUSED))
#define ANY_DECIDED (DECIDED(1) || DECIDED(2) || DECIDED(3) || DECIDED(4))

proctype Worker(byte id) {
    byte pos;        /* next batch starts after this position */
    byte mine[R + 2];/* id of this worker's batch ending at r */
    byte r;
    byte b;
    byte last;

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
        od;
        b = 0; last = 0
    }
    do
    /* Stage the next batch (one or two records, files at deterministic keys) and register it under its id.
       The lease is not checked here: a zombie registers too, and the checkpoint compare-and-set must stop
       it. */
    :: pos < R ->
        atomic {
            if
            :: last = pos + 1
            :: pos + 2 <= R -> last = pos + 2
            fi;
            b = ID(pos, last);
            if
            :: reg_state[b] == ABSENT || reg_state[b] == REFUSED ->   /* W5: a refusal answered one attempt */
                reg_state[b] = PENDING; npending++
            :: else -> skip                                            /* pending or merged: a retry */
            fi;
            mine[last] = b;
            pos = last;
            b = 0; last = 0
        }
    /* Learn a batch's fate from the coordinator. */
    :: atomic {
        ANY_DECIDED ->
        r = 1;
        do
        :: r <= R && mine[r] != NONE && reg_state[mine[r]] == MERGED ->
            /* Acknowledge (an SQS delete; for Kinesis and files the checkpoint is the acknowledgement). */
            b = PREV(mine[r]) + 1;
            do
            :: b <= r -> assert(merged[b] == 1); b++    /* no acknowledgement before its merge */
            :: else -> break
            od;
            mine[r] = NONE;
            b = 0;
            break
        :: r <= R && mine[r] != NONE && reg_state[mine[r]] == REFUSED ->
            mine[r] = NONE;
            r = NONE;                    /* the checkpoint moved under us: restart from it */
            break
        :: r <= R && !DECIDED(r) -> r++
        :: r > R -> break
        od
       }
       if
       :: r == NONE -> goto end_start
       :: else -> r = 0
       fi
    /* Crash: local state is lost; the lease stays until it expires (or is claimed again). */
    :: FAULT -> faults++; goto end_start
    /* Notice a lost lease (the renewal failed): stop, and claim again later. */
    :: lease_owner != id -> goto end_start
    /* Done: everything is merged. */
    :: ck == R -> break
    od
}

#define TAKE(b) (reg_state[b] == PENDING && !seen[b])

proctype Loader(byte id) {
    byte epoch;
    byte i;
    byte b;
    byte c;
    byte j;
    byte results[NID];
    bool seen[NID];

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
    /* One warehouse transaction over every pending batch, met in any order (the registry's order is the
       order of registration, which races between workers). */
    :: atomic {
        npending > 0 ->
        i = 0;
        do
        :: i < NID -> results[i] = NONE; seen[i] = false; i++
        :: else -> break
        od;
        if
        :: fence > epoch -> skip               /* a newer loader committed: this one is a zombie */
        :: else ->
            fence = epoch;
            do
            :: true ->
                /* c batches are left; take the j-th of them, for any j */
                c = 0; b = 0;
                do
                :: b < NID && TAKE(b) -> c++; b++
                :: b < NID && !TAKE(b) -> b++
                :: else -> break
                od;
                if
                :: c == 0 -> break
                :: else -> skip
                fi;
                j = 0;
                do
                :: j + 1 < c -> j++
                :: true -> break
                od;
                b = 0;
                do
                :: TAKE(b) && j == 0 -> break
                :: TAKE(b) && j > 0 -> j--; b++
                :: !TAKE(b) -> b++
                od;
                seen[b] = true;
                if
                :: in_ledger[b] -> results[b] = MERGED           /* merged by an earlier transaction */
                :: !in_ledger[b] && PREV(b) == ck ->             /* checkpoint compare-and-set */
                    i = PREV(b) + 1;
                    do
                    :: i <= LAST(b) -> merged[i]++; assert(merged[i] == 1); i++   /* nothing doubled */
                    :: else -> break
                    od;
                    ck = LAST(b);
                    in_ledger[b] = true;
                    results[b] = MERGED
                :: !in_ledger[b] && PREV(b) != ck ->
                    results[b] = REFUSED                          /* another batch moved the checkpoint */
                fi
            od
        fi;
        i = 0; b = 0; c = 0; j = 0;
        do
        :: i < NID -> seen[i] = false; i++
        :: else -> break
        od;
        i = 0
       }
       /* After the commit, the registry learns each batch's fate, one conditional write (over pending only)
          at a time; a crash may come between any two. */
       do
       :: i < NID && results[i] != NONE ->
           atomic {
               if
               :: reg_state[i] == PENDING -> reg_state[i] = results[i]; npending--
               :: else -> skip
               fi;
               results[i] = NONE;
               i++
           }
       :: i < NID && results[i] == NONE -> i++
       :: i < NID && FAULT -> faults++; goto end_start
       :: i >= NID -> i = 0; break
       od
    :: FAULT -> faults++; goto end_start
    od
}

/* Nothing lost: once the checkpoint reaches the end, every record was merged once. */
proctype Done() {
    byte r = 1;
    ck == R;
    do
    :: r <= R -> assert(merged[r] == 1); r++
    :: else -> break
    od
}

/* Liveness (checked with weak fairness, without SAFETY): every run merges the whole partition. */
ltl all_merged { <> (ck == R) }

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
