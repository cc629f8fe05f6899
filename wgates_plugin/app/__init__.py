"""Application code on top of the library: training loops and the end-to-end recipe
(:mod:`.training`), datasets (:mod:`.data`), torchvision model builders (:mod:`.models`), saving and
loading pruned models (:mod:`.serialization`) and the ``wgates`` command (:mod:`.cli`,
:mod:`.commands`)."""
