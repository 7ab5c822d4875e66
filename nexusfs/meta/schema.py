"""The metadata schema: the one place that says what every table and column means.

The DDL below is written once; the dialect (SQLite or PostgreSQL) fills in the
few type names that differ: ``{ID}`` (an auto-increment integer key that is
never reused), ``{BLOB}`` (raw bytes) and ``{NOROWID}`` (a clustered primary key).

Invariants (``nexus fsck`` checks each one):

* every ``dentries.inode`` and ``dentries.parent`` names an existing inode, and
  every parent is a directory;
* ``inodes.nlink`` of a non-directory equals its number of dentries; of a
  directory, 2 + its number of sub-directories (the root counts its own '..');
* every directory except the root has exactly one dentry (no directory hard links);
* an inode with ``nlink = 0`` exists only while some process still has it open
  (a crash leaves it behind: an *orphan*, which fsck removes);
* ``objects.refcount`` equals the number of ``blocks`` rows naming the object;
* every ``blocks.object`` names an object in state 1 (live) whose blob exists and
  whose content hashes to ``objects.hash``;
* a file's content is either inline (``inodes.inline`` not NULL, no blocks
  rows) or in blocks (``inline`` NULL).
"""

from __future__ import annotations

SCHEMA_VERSION = 2

#: Objects in this state have a row (and so a blob key) but are not yet
#: referenced by any committed file: an upload is under way or was interrupted.
OBJECT_PENDING = 0
#: Objects in this state have been uploaded and referenced at least once.
OBJECT_LIVE = 1

CODEC_NONE = 0
CODEC_ZSTD = 1

DDL = """
-- meta: settings fixed when the store was created, and the schema version.
--   key   : 'schema_version', 'block_size', 'inline_max', 'compression', 'uuid', 'created_ns'
--   value : the setting, as text
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- inodes: one row per file, directory, symlink, fifo, socket or device node.
--   id           : inode number; 1 is the root directory; never reused
--   mode         : st_mode: file type bits (S_IFREG, S_IFDIR, ...) | permission bits
--                  (incl. setuid, setgid, sticky)
--   uid, gid     : owner and group
--   nlink        : number of names; directories: 2 + number of sub-directories;
--                  0 = unlinked but still open somewhere (removed on last close)
--   size         : length in bytes (regular files), of the target (symlinks), 0 otherwise
--   rdev         : device number of character/block device nodes, else 0
--   atime_ns     : last access, nanoseconds since the epoch (relatime rules)
--   mtime_ns     : last modification of the content (files) or of the entries (directories)
--   ctime_ns     : last change of the inode itself (content, mode, owner, links, xattrs)
--   btime_ns     : creation time
--   alloc        : bytes of content actually stored (holes excluded); gives st_blocks
--   data_version : incremented on every committed content change (caches, search index)
--   inline       : the whole content of a small regular file, or NULL when the content
--                  is in `blocks` (always NULL for other inode types)
CREATE TABLE inodes (
    id           {ID},
    mode         INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    gid          INTEGER NOT NULL,
    nlink        INTEGER NOT NULL,
    size         BIGINT  NOT NULL DEFAULT 0,
    rdev         BIGINT  NOT NULL DEFAULT 0,
    atime_ns     BIGINT  NOT NULL,
    mtime_ns     BIGINT  NOT NULL,
    ctime_ns     BIGINT  NOT NULL,
    btime_ns     BIGINT  NOT NULL,
    alloc        BIGINT  NOT NULL DEFAULT 0,
    data_version BIGINT  NOT NULL DEFAULT 0,
    inline       {BLOB}
);

-- dentries: the names in directories.
--   id     : readdir cookie; grows monotonically and is never reused, so an offset
--            handed to readdir stays valid while the directory changes
--   parent : inode of the directory holding the name
--   name   : the name as raw bytes (1..255 bytes, no '/' and no NUL; never '.' or '..')
--   inode  : the inode the name refers to
CREATE TABLE dentries (
    id     {ID},
    parent BIGINT NOT NULL,
    name   {BLOB} NOT NULL,
    inode  BIGINT NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX dentries_by_parent ON dentries (parent, id);
CREATE INDEX dentries_by_inode ON dentries (inode);

-- objects: distinct block contents (content-addressed, deduplicated).
--   id          : object number; the blob key is '<hash hex>-<id>', so a key is never
--                 reused for other content even after the object is collected
--   hash        : BLAKE3-256 digest of the raw (uncompressed) block
--   size        : raw length in bytes
--   stored_size : length of the blob in the blob store (after compression)
--   codec       : 0 = stored raw, 1 = zstd frame
--   refcount    : number of `blocks` rows naming this object (committed references only)
--   state       : 0 = pending (reserved before upload, not yet referenced by a committed
--                 file); 1 = live (committed at least once)
--   unref_ns    : NULL while referenced; else when the object last became unreferenced,
--                 was reserved (pending), or was picked for reuse by a writer (a dedup
--                 hit). Garbage collection removes unreferenced objects only once this is
--                 older than its grace period, so a writer's upload or reuse is never
--                 collected before its commit.
CREATE TABLE objects (
    id          {ID},
    hash        {BLOB}  NOT NULL,
    size        BIGINT  NOT NULL,
    stored_size BIGINT  NOT NULL,
    codec       INTEGER NOT NULL,
    refcount    BIGINT  NOT NULL,
    state       INTEGER NOT NULL,
    unref_ns    BIGINT
);
CREATE INDEX objects_by_hash ON objects (hash);
CREATE INDEX objects_unreferenced ON objects (unref_ns) WHERE refcount = 0;

-- blocks: which object holds each block of a file. A missing row is a hole (reads
-- as zeros). Block idx covers bytes [idx * block_size, (idx + 1) * block_size).
--   inode  : the regular file
--   idx    : block index within the file
--   object : the object holding the block's content; its size may be shorter than
--            block_size (the last block, or a block followed by a hole): the rest
--            reads as zeros
CREATE TABLE blocks (
    inode  BIGINT NOT NULL,
    idx    BIGINT NOT NULL,
    object BIGINT NOT NULL,
    PRIMARY KEY (inode, idx)
){NOROWID};
CREATE INDEX blocks_by_object ON blocks (object);

-- symlinks: the target of each symbolic link.
--   inode  : the symlink's inode
--   target : the target path, raw bytes, as given to symlink(2)
CREATE TABLE symlinks (
    inode  BIGINT PRIMARY KEY,
    target {BLOB} NOT NULL
);

-- xattrs: extended attributes.
--   inode : the inode they belong to
--   name  : full attribute name including its namespace ('user.foo'), raw bytes
--   value : raw bytes (up to 64 KiB)
CREATE TABLE xattrs (
    inode BIGINT NOT NULL,
    name  {BLOB} NOT NULL,
    value {BLOB} NOT NULL,
    PRIMARY KEY (inode, name)
){NOROWID};
"""

SEARCH_DDL = """
-- index_jobs: files whose search index entries must be brought up to date. A content
-- change enqueues its file in the same transaction, so the index can always tell
-- what it has not caught up with yet.
--   inode            : the file (it may be gone by the time the job runs)
--   queued_ns        : when the newest change was enqueued (a job is done only for
--                      the version it was claimed at)
--   attempts         : failed attempts so far (retried with growing delays)
--   not_before_ns    : do not retry before this time
--   claimed_until_ns : an indexer is working on it until then (a lease: a crashed
--                      indexer's claims simply expire)
--   last_error       : the last failure, for `nexus index --status`
CREATE TABLE index_jobs (
    inode            BIGINT PRIMARY KEY,
    queued_ns        BIGINT  NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    not_before_ns    BIGINT  NOT NULL DEFAULT 0,
    claimed_until_ns BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT
);

-- search_docs: distinct file contents that have been indexed. Identical files share
-- one doc (content-addressed, like blocks), so copies cost nothing to index.
--   id         : doc number (rowid of the dialect's full-text and vector tables)
--   digest     : BLAKE3 over the file's size and block hashes, or its inline content
--   kind       : 'text' (in the grep index), 'nonutf8' (text that is not valid UTF-8:
--                its valid parts in the grep index), 'raw' (the same, indexed by an older
--                version: always scanned), 'binary' (skipped by grep), 'pdf' / 'docx'
--                (text extracted for semantic search only), 'large' (too large to index:
--                always scanned)
--   size       : content length in bytes
--   chunks     : number of search_chunks rows (semantic pieces); -1: not cut into chunks
--                (indexed where semantic indexing could not run, or only found in a
--                directory it skips): the next semantic indexer to meet one of its files does it
--   indexed_ns : when it was indexed
CREATE TABLE search_docs (
    id         {ID},
    digest     {BLOB}  NOT NULL UNIQUE,
    kind       TEXT    NOT NULL,
    size       BIGINT  NOT NULL,
    chunks     INTEGER NOT NULL DEFAULT 0,
    indexed_ns BIGINT  NOT NULL
);
CREATE INDEX search_docs_by_kind ON search_docs (kind);

-- search_files: the doc each file's content was when it was last indexed.
--   inode        : the file
--   doc          : its search_docs row
--   data_version : inodes.data_version that was indexed; a different current value
--                  means the entry is stale (and a job is queued)
CREATE TABLE search_files (
    inode        BIGINT PRIMARY KEY,
    doc          BIGINT NOT NULL,
    data_version BIGINT NOT NULL
);
CREATE INDEX search_files_by_doc ON search_files (doc);

-- search_chunks: the pieces of a doc's text that semantic search ranks.
--   id         : chunk number (rowid of the dialect's vector and BM25 tables)
--   doc        : the doc
--   seq        : position within the doc
--   start_line : first line (1-based) of the piece in the file
--   end_line   : last line (inclusive)
--   text       : the piece itself (snippets, BM25)
CREATE TABLE search_chunks (
    id         {ID},
    doc        BIGINT  NOT NULL,
    seq        INTEGER NOT NULL,
    start_line INTEGER NOT NULL,
    end_line   INTEGER NOT NULL,
    text       TEXT    NOT NULL
);
CREATE INDEX search_chunks_by_doc ON search_chunks (doc, seq);

-- every existing file needs indexing once
INSERT INTO index_jobs (inode, queued_ns) SELECT id, 0 FROM inodes WHERE (mode & 61440) = 32768;
"""

#: Migrations from version N to N+1, as DDL (with the same placeholders). The engine
#: runs them in order when it opens an older store; a new store is created at
#: version 1 and migrated too, so every store is built by the same statements.
MIGRATIONS: dict[int, str] = {1: SEARCH_DDL}
