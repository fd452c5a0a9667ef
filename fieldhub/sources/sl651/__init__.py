"""SL 651-2014 hydrological stations: a TCP server for station DTUs (``[sl651]``)."""
