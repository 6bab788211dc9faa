"""Block manager: trace a model, cut it into blocks, generate, store and switch descendants."""

from typing import TYPE_CHECKING

from legodnn._lazy import lazy_exports

_EXPORTS = {
    "AutoBlockManager": ".auto_block_manager",
    "BlockSpec": ".specs",
    "BlockStore": ".store",
    "BlockSwitcher": ".switcher",
    "DescendantSpec": ".specs",
    "LayerRegistry": ".layers",
    "LeafLayer": ".layers",
    "LegoModel": ".switcher",
    "Partition": ".partition",
    "StoreManifest": ".manifest",
    "StoreWriter": ".store",
    "SwitchResult": ".switcher",
    "default_layers": ".layers",
    "register_leaf": ".layers",
    "slice_channels": ".layers",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names for type checkers and editors; at run time they load on use
    from .auto_block_manager import AutoBlockManager as AutoBlockManager  # noqa: F401
    from .layers import (  # noqa: F401
        LayerRegistry as LayerRegistry,
        LeafLayer as LeafLayer,
        default_layers as default_layers,
        register_leaf as register_leaf,
        slice_channels as slice_channels,
    )
    from .manifest import StoreManifest as StoreManifest  # noqa: F401
    from .partition import Partition as Partition  # noqa: F401
    from .specs import BlockSpec as BlockSpec, DescendantSpec as DescendantSpec  # noqa: F401
    from .store import BlockStore as BlockStore, StoreWriter as StoreWriter  # noqa: F401
    from .switcher import (  # noqa: F401
        BlockSwitcher as BlockSwitcher,
        LegoModel as LegoModel,
        SwitchResult as SwitchResult,
    )
