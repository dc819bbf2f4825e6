"""What the tests import: the shrunken params (config), temporary DVC projects (projects),
CelebA layouts made from the sample (celeba_layouts), a project with a registered champion
(champion_project), and pause_after_epoch/ (a sitecustomize that holds a train stage)."""
