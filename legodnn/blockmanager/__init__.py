"""Block manager: trace a model, cut it into blocks, generate, store and switch descendants."""

from .auto_block_manager import AutoBlockManager as AutoBlockManager
from .partition import Partition as Partition
from .specs import BlockSpec as BlockSpec, DescendantSpec as DescendantSpec
from .store import BlockStore as BlockStore
from .switcher import (
    BlockSwitcher as BlockSwitcher,
    LegoModel as LegoModel,
    SwitchResult as SwitchResult,
)

__all__ = [
    "AutoBlockManager",
    "BlockSpec",
    "BlockStore",
    "BlockSwitcher",
    "DescendantSpec",
    "LegoModel",
    "Partition",
    "SwitchResult",
]
