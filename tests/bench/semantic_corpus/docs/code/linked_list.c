#include <stdlib.h>

struct node {
    int value;
    struct node *next;
};

/* Turn the list around in place: walk it once, pointing each node back at its predecessor.
 * Returns the new head (the old tail). O(n) time, O(1) extra memory. */
struct node *list_reverse(struct node *head)
{
    struct node *prev = NULL;
    while (head) {
        struct node *next = head->next;
        head->next = prev;
        prev = head;
        head = next;
    }
    return prev;
}

/* Release every node; safe on an empty list. */
void list_free(struct node *head)
{
    while (head) {
        struct node *next = head->next;
        free(head);
        head = next;
    }
}

struct node *list_push(struct node *head, int value)
{
    struct node *n = malloc(sizeof *n);
    if (!n)
        return NULL;
    n->value = value;
    n->next = head;
    return n;
}
