"""The pretraining methods, one module per family; the list of them is :mod:`sdclr.registry`.

This package's face imports nothing, so that a stage importing one method (or only
:mod:`.base`) depends on no other method's file and not on the registry.
"""
