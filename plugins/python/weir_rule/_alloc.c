/* weir_rule._alloc: pymalloc for the CPython inside a componentize-py component.
 *
 * componentize-py 0.25 builds CPython 3.14 for WASI without pymalloc, so every small object a rule makes (each
 * str, int, tuple, dict) is a trip through wasi-libc's malloc, where native CPython takes it from its own pools;
 * with this module the sandboxed orders rule runs 5-14 % faster (docs/PERFORMANCE.md, "pymalloc for the
 * sandboxed CPython"). The helper imports it first; native CPython, which has pymalloc, has no such module and
 * the helper goes on without it.
 *
 * Importing it wraps the MEM and OBJ domains' allocators (PyMem_SetAllocator): requests up to 512 bytes come
 * from 16 KiB pools of one block size, pymalloc's design (a free list per pool, an emptied pool goes back to
 * every size class); larger requests, and the blocks allocated before the import, go to the allocator it
 * wraps, which is what CPython's documentation asks of an allocator installed after initialization. A byte
 * per 16 KiB of the 32-bit address space says which pools are ours. The interpreter holds its lock around
 * these domains, and a component has one thread, so nothing here is atomic.
 *
 * Built by scripts/build-plugins.sh with Debian's clang 14 (which makes position-independent WebAssembly only
 * for Emscripten; no C library is used, so the object links as a WASI shared library all the same) and
 * checked in as _alloc.cpython-314-wasm32-wasi.so, which `weir plugin new --lang python` writes into new
 * projects; the script fails if the checked-in file is not what this source builds to. The suffix ties it to
 * CPython 3.14: another CPython does not import it and the helper runs without it. No Python.h for CPython 3.14
 * on WASI is at hand, so the few declarations it needs are written out for wasm32 (4-byte pointers and
 * Py_ssize_t); all of them are part of CPython's stable ABI or, for the allocator API, unchanged since 3.5. */
typedef unsigned long size_t;
typedef long Py_ssize_t;
typedef unsigned char u8;
typedef unsigned int u32;

typedef struct { void *ctx; void *(*malloc)(void *, size_t); void *(*calloc)(void *, size_t, size_t);
                 void *(*realloc)(void *, void *, size_t); void (*free)(void *, void *); } PyMemAllocatorEx;
extern void PyMem_GetAllocator(int domain, PyMemAllocatorEx *a);
extern void PyMem_SetAllocator(int domain, PyMemAllocatorEx *a);
typedef struct { Py_ssize_t ob_refcnt; void *ob_type; } PyObject;
typedef struct { PyObject ob_base; PyObject *(*m_init)(void); Py_ssize_t m_index; PyObject *m_copy; } PyModuleDef_Base;
typedef struct { PyModuleDef_Base m_base; const char *m_name; const char *m_doc; Py_ssize_t m_size; void *m_methods;
                 void *m_slots; void *m_traverse; void *m_clear; void *m_free; } PyModuleDef;
extern PyObject *PyModuleDef_Init(PyModuleDef *);

#define POOL_SHIFT 14
#define POOL_SIZE ((size_t)1 << POOL_SHIFT)
#define ARENA_POOLS 64
#define MAX_SMALL 512
#define ALIGN_SHIFT 3
#define CLASSES (MAX_SMALL >> ALIGN_SHIFT)

typedef struct block { struct block *next; } block;
typedef struct pool {
    u32 used;            /* blocks handed out */
    u32 size;            /* block size in bytes */
    block *free;         /* freed blocks of this pool */
    char *bump, *end;    /* never-used blocks */
    struct pool *next, *prev; /* in its class's list of pools with room */
} pool;
#define FIRST_BLOCK(p) ((char *)(p) + 32)
_Static_assert(sizeof(pool) <= 32, "the pool header fits before the first block");

static PyMemAllocatorEx prev;
static u8 *ours;               /* 1 per 16 KiB pool of the 4 GiB address space that is one of ours */
static pool *with_room[CLASSES];
static pool *empty_pools;      /* whole pools no class holds */
static char *spare, *spare_end;

static pool *take_pool(u32 c) {
    pool *p = empty_pools;
    if (p) {
        empty_pools = p->next;
    } else {
        if (spare == spare_end) {
            char *a = prev.malloc(prev.ctx, (ARENA_POOLS + 1) * POOL_SIZE);
            if (!a) return 0;
            spare = (char *)(((size_t)a + POOL_SIZE - 1) & ~(POOL_SIZE - 1));
            spare_end = spare + ARENA_POOLS * POOL_SIZE;
        }
        p = (pool *)spare;
        spare += POOL_SIZE;
        ours[(size_t)p >> POOL_SHIFT] = 1;
    }
    p->used = 0;
    p->size = (c + 1) << ALIGN_SHIFT;
    p->free = 0;
    p->bump = FIRST_BLOCK(p);
    p->end = (char *)p + POOL_SIZE;
    p->next = 0;
    p->prev = 0;
    with_room[c] = p;
    return p;
}

static inline void *small_alloc(u32 c) {
    pool *p = with_room[c];
    if (!p && !(p = take_pool(c))) return 0;
    p->used++;
    block *b = p->free;
    if (b) {
        p->free = b->next;
    } else {
        b = (block *)p->bump;
        p->bump += p->size;
    }
    if (!p->free && p->bump + p->size > p->end) { /* full: out of the list */
        with_room[c] = p->next;
        if (p->next) p->next->prev = 0;
    }
    return b;
}

static void small_free(pool *p, void *ptr) {
    u32 c = (p->size >> ALIGN_SHIFT) - 1;
    int was_full = !p->free && p->bump + p->size > p->end;
    block *b = ptr;
    b->next = p->free;
    p->free = b;
    if (was_full) { /* back in the list, at its head */
        p->prev = 0;
        p->next = with_room[c];
        if (p->next) p->next->prev = p;
        with_room[c] = p;
    }
    if (--p->used == 0 && (p->prev || p->next)) { /* empty and not the class's only pool: give it back */
        if (p->prev) p->prev->next = p->next; else with_room[c] = p->next;
        if (p->next) p->next->prev = p->prev;
        p->next = empty_pools;
        empty_pools = p;
    }
}

static void *a_malloc(void *ctx, size_t n) {
    if (n - 1 < MAX_SMALL) return small_alloc((u32)((n - 1) >> ALIGN_SHIFT));
    if (n == 0) return small_alloc(0);
    return prev.malloc(prev.ctx, n);
}
static void *a_calloc(void *ctx, size_t k, size_t m) {
    if (m && k > (size_t)-1 / m) return 0;
    size_t n = k * m;
    if (n <= MAX_SMALL) { void *p = a_malloc(ctx, n); if (p) __builtin_memset(p, 0, n); return p; }
    return prev.calloc(prev.ctx, k, m);
}
static void a_free(void *ctx, void *ptr) {
    if (!ptr) return;
    if (ours[(size_t)ptr >> POOL_SHIFT]) { small_free((pool *)((size_t)ptr & ~(POOL_SIZE - 1)), ptr); return; }
    prev.free(prev.ctx, ptr);
}
static void *a_realloc(void *ctx, void *ptr, size_t n) {
    if (!ptr) return a_malloc(ctx, n);
    if (!ours[(size_t)ptr >> POOL_SHIFT]) return prev.realloc(prev.ctx, ptr, n);
    pool *p = (pool *)((size_t)ptr & ~(POOL_SIZE - 1));
    size_t have = p->size;
    if (n <= have && n > have / 2) return ptr;
    void *q = a_malloc(ctx, n);
    if (!q) return 0;
    __builtin_memcpy(q, ptr, n < have ? n : have);
    small_free(p, ptr);
    return q;
}

/* A static object: its reference count starts where no decrement brings it to zero. */
static PyModuleDef def = {{{0x60000000, 0}, 0, 0, 0}, "weir_rule._alloc", 0, 0, 0, 0, 0, 0, 0};

__attribute__((visibility("default"))) PyObject *PyInit__alloc(void) {
    /* Once per process, even if the module is imported again; without memory for the map, CPython keeps
     * the allocator it has. */
    if (!ours) {
        PyMem_GetAllocator(1, &prev);
        ours = prev.calloc(prev.ctx, (size_t)1 << (32 - POOL_SHIFT), 1);
        if (ours) {
            PyMemAllocatorEx a = {0, a_malloc, a_calloc, a_realloc, a_free};
            PyMem_SetAllocator(1, &a);
            PyMem_SetAllocator(2, &a);
        }
    }
    return PyModuleDef_Init(&def);
}
