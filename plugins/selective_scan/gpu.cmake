# SelectiveScan's GPU side, included by CMakeLists.txt beside it (conventions documented there). Three parts:
#   plugin_logic  libavs_scan_plugin_logic.so  the plugin's TensorRT-free logic and the contract, ctypes test ABI;
#                                              always built
#   scan_cuda     libavs_scan_cuda.so          avsSelectiveScanCuda(); built when nvcc is found
#   trt_plugin    libavs_trt_plugins.so        the IPluginV3 plugin; built when nvcc and TensorRT are found
# Options: -DCMAKE_CUDA_ARCHITECTURES="87;89;90" (the default: Jetson Orin, Ada, Hopper; each also embeds PTX),
# -DCMAKE_CUDA_COMPILER=/path/to/nvcc, -DTENSORRT_ROOT=<dir with include/NvInferRuntime.h and lib/libnvinfer.so>.
# Each library exports only its entry points (a linker version script) and must link without undefined symbols.

# Writes a version script exporting `symbols` and applies it to `target`, refusing undefined symbols.
function(_avs_export_only target)
    set(map ${CMAKE_CURRENT_BINARY_DIR}/${target}.map)
    list(JOIN ARGN ";\n    " globals)
    file(WRITE ${map} "{\n  global:\n    ${globals};\n  local: *;\n};\n")
    target_link_options(${target} PRIVATE "LINKER:--version-script=${map}" "LINKER:--no-undefined")
    set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${map})
endfunction()

# --- plugin_logic: plain C++, no CUDA or TensorRT needed ---------------------------------------------------------
add_library(avs_scan_plugin_logic_objects OBJECT ${AVS_SCAN_DIR}/selectiveScanPluginLogic.cpp)
target_include_directories(avs_scan_plugin_logic_objects PUBLIC ${AVS_SCAN_DIR})
target_compile_options(avs_scan_plugin_logic_objects PRIVATE -Wall -Wextra)

# The test library: the logic, the contract and the ctypes ABI (selectiveScanTestAbi.cpp, which marks its own
# symbols visible); the plugin library links the first two only.
add_library(avs_scan_plugin_logic SHARED ${AVS_SCAN_DIR}/selectiveScanTestAbi.cpp
    $<TARGET_OBJECTS:avs_scan_plugin_logic_objects> $<TARGET_OBJECTS:avs_scan_contract>)
target_include_directories(avs_scan_plugin_logic PRIVATE ${AVS_SCAN_DIR})
target_compile_options(avs_scan_plugin_logic PRIVATE -Wall -Wextra)
_avs_export_only(avs_scan_plugin_logic "avsScanLogic*" "avsScanContract*")
avs_report_part(plugin_logic built "" TARGET avs_scan_plugin_logic LABEL "TensorRT plugin logic")

# --- scan_cuda: the kernel and its launcher ----------------------------------------------------------------------
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc) # JetPack and the runfile installers leave it off PATH
endif()
include(CheckLanguage)
check_language(CUDA)
set(_avs_have_cuda OFF)
if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
        set(CMAKE_CUDA_ARCHITECTURES "87;89;90" CACHE STRING "GPU architectures to compile the scan kernel for" FORCE)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit)
    if(CUDAToolkit_FOUND)
        set(_avs_have_cuda ON)
    endif()
endif()

if(_avs_have_cuda)
    add_library(avs_scan_cuda_objects OBJECT ${AVS_SCAN_DIR}/selectiveScanKernel.cu)
    target_include_directories(avs_scan_cuda_objects PUBLIC ${AVS_SCAN_DIR})
    set_target_properties(avs_scan_cuda_objects PROPERTIES
        CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON CUDA_VISIBILITY_PRESET default POSITION_INDEPENDENT_CODE ON)
    target_compile_options(avs_scan_cuda_objects PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)

    add_library(avs_scan_cuda SHARED $<TARGET_OBJECTS:avs_scan_cuda_objects>)
    set_target_properties(avs_scan_cuda PROPERTIES LINKER_LANGUAGE CXX)
    target_link_libraries(avs_scan_cuda PRIVATE CUDA::cudart_static)
    _avs_export_only(avs_scan_cuda avsSelectiveScanCuda)
    avs_report_part(scan_cuda built "" TARGET avs_scan_cuda LABEL "CUDA kernels")
else()
    avs_report_part(scan_cuda skipped
        "nvcc not found: install the CUDA toolkit or pass -DCMAKE_CUDA_COMPILER=/path/to/nvcc"
        LABEL "CUDA kernels")
endif()

# --- trt_plugin: IPluginV3 over the logic and the launcher --------------------------------------------------------
unset(AVS_TENSORRT_INCLUDE_DIR CACHE)
unset(AVS_NVINFER_LIBRARY CACHE)
find_path(AVS_TENSORRT_INCLUDE_DIR NvInferRuntime.h
    HINTS ${TENSORRT_ROOT}/include ${TENSORRT_ROOT}
    PATHS /usr/include/aarch64-linux-gnu /usr/include/x86_64-linux-gnu /usr/local/TensorRT/include /usr/include)
find_library(AVS_NVINFER_LIBRARY nvinfer
    HINTS ${TENSORRT_ROOT}/lib ${TENSORRT_ROOT}/lib64 ${TENSORRT_ROOT}
    PATHS /usr/lib/aarch64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/local/TensorRT/lib)

if(NOT AVS_TENSORRT_INCLUDE_DIR)
    avs_report_part(trt_plugin skipped "NvInferRuntime.h not found: pass --tensorrt-root DIR or -DTENSORRT_ROOT=DIR"
        LABEL "TensorRT plugin")
elseif(NOT AVS_NVINFER_LIBRARY)
    avs_report_part(trt_plugin skipped
        "libnvinfer not found for the headers in ${AVS_TENSORRT_INCLUDE_DIR}: pass --tensorrt-root DIR"
        LABEL "TensorRT plugin")
elseif(NOT _avs_have_cuda)
    avs_report_part(trt_plugin skipped "TensorRT found, but the plugin needs the CUDA kernel and nvcc was not found"
        LABEL "TensorRT plugin")
else()
    add_library(avs_trt_plugins SHARED
        ${AVS_SCAN_DIR}/selectiveScanPlugin.cpp
        ${AVS_SCAN_DIR}/selectiveScanPluginExports.cpp
        $<TARGET_OBJECTS:avs_scan_plugin_logic_objects>
        $<TARGET_OBJECTS:avs_scan_contract>
        $<TARGET_OBJECTS:avs_scan_cuda_objects>)
    target_include_directories(avs_trt_plugins PRIVATE ${AVS_SCAN_DIR})
    target_include_directories(avs_trt_plugins SYSTEM PRIVATE ${AVS_TENSORRT_INCLUDE_DIR})
    target_compile_options(avs_trt_plugins PRIVATE -Wall -Wextra)
    # NOTE: no link to libnvinfer: an IPluginV3 library needs none of its symbols (--no-undefined checks that), so
    # the library pins no libnvinfer soname; TensorRT has already loaded libnvinfer when it loads the plugin.
    target_link_libraries(avs_trt_plugins PRIVATE CUDA::cudart_static)
    _avs_export_only(avs_trt_plugins getCreators setLoggerFinder)
    avs_report_part(trt_plugin built "" TARGET avs_trt_plugins LABEL "TensorRT plugin")
endif()
