-- Lending library: members borrow copies of books for three weeks.
CREATE TABLE book (
    id        INTEGER PRIMARY KEY,
    isbn      TEXT UNIQUE NOT NULL,
    title     TEXT NOT NULL,
    author    TEXT NOT NULL
);

CREATE TABLE member (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL,
    email     TEXT UNIQUE
);

CREATE TABLE loan (
    id          INTEGER PRIMARY KEY,
    book_id     INTEGER NOT NULL REFERENCES book(id),
    member_id   INTEGER NOT NULL REFERENCES member(id),
    borrowed_on DATE NOT NULL,
    due_on      DATE NOT NULL,
    returned_on DATE            -- NULL while the book is still out
);

-- Who has a book past its due date, and how many days late it is.
SELECT m.name, m.email, b.title, julianday('now') - julianday(l.due_on) AS days_late
FROM loan l
JOIN member m ON m.id = l.member_id
JOIN book b ON b.id = l.book_id
WHERE l.returned_on IS NULL AND l.due_on < date('now')
ORDER BY days_late DESC;
