"""Entity keys: the partition key of a customer (``c:<customer_id>``) or of an anonymous device
(``a:<anonymous_id>``). Every place that builds or reads a key uses these (the Redis keys wrap
them in a hash tag, see :mod:`features.store`).

>>> customer_key("42"), device_key("d9"), is_device(device_key("d9")), entity_id("c:42")
('c:42', 'a:d9', True, '42')
"""

from __future__ import annotations

from typing import Final

CUSTOMER: Final = "c:"
DEVICE: Final = "a:"


def customer_key(customer_id: str) -> str:
    """The partition key of a customer."""
    return CUSTOMER + customer_id


def device_key(anonymous_id: str) -> str:
    """The partition key of an anonymous device."""
    return DEVICE + anonymous_id


def is_device(key: str) -> bool:
    """Whether a partition key is a device's."""
    return key.startswith(DEVICE)


def entity_id(key: str) -> str:
    """The customer or anonymous id of a partition key."""
    return key[len(CUSTOMER) :]
