"""Staged rollouts: deploy a model's best-fitting variants to a selection of devices,
wave by wave, gated on reported health, rolling back automatically.

One concept a module, so each reads on its own:

- :mod:`.document`: the rollout as stored in Redis (the whole truth), its gate and request
- :mod:`.planning`: which devices (selectors), which variant each (selection under the
  device's own latency budget), and in which wave
- :mod:`.gates`: whether a device is healthy from what it reports (activation, error
  rate, latency against its prediction, accuracy, enough traffic to judge at all)
- :mod:`.manager`: creates, controls and advances rollouts (the level-triggered loop)

``rollout_controller`` runs the manager's ``tick`` on one replica.
"""
