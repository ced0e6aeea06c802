// placeholder until the host backend lands
