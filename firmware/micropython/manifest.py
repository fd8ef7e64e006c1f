# ruff: noqa: F821  (include/package are defined by MicroPython's manifest tool)
# Freezes the firmware's library into a custom MicroPython build: its bytecode then runs from
# flash instead of being loaded into the heap. From a MicroPython checkout of the version the
# board should run (PATH = this directory):
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=PATH/manifest.py
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=PATH/manifest.py
# then flash the build and put only boot.py, main.py and config.json on the board (README.md).
include("$(PORT_DIR)/boards/manifest.py")
package("edgence", base_path="lib")
module("otaboot.py", base_path="lib")
