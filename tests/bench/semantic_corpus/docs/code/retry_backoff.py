import random
import time
from functools import wraps


def retry(attempts=5, base_delay=0.2, max_delay=10.0, retry_on=(ConnectionError, TimeoutError)):
    """Call the wrapped function again when it fails with a transient error.

    The pause doubles after every failure (0.2 s, 0.4 s, 0.8 s ...) up to max_delay, and a
    random fraction of it is added so that many clients that failed together do not all come
    back at the same instant and overload the server a second time.
    """

    def decorate(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            delay = base_delay
            for attempt in range(1, attempts + 1):
                try:
                    return func(*args, **kwargs)
                except retry_on:
                    if attempt == attempts:
                        raise
                    time.sleep(delay + random.uniform(0, delay))
                    delay = min(delay * 2, max_delay)

        return wrapper

    return decorate


@retry(attempts=3)
def fetch_quote(client, symbol):
    return client.get(f"/quotes/{symbol}")
