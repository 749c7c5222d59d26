// The two symbols libavs_trt_plugins.so exports, what IPluginRegistry::loadLibrary() (Python
// `trt.get_plugin_registry().load_library(path)`, `trtexec --dynamicPlugins=path`) looks for. The library
// registers nothing when it is merely dlopen'ed: loadLibrary() fails if a creator is already registered.
#include "selectiveScanPlugin.h"

// TENSORRTAPI marks symbols only while TensorRT itself is built; a plugin library marks its own.
#define AVS_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" AVS_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static avs::SelectiveScanPluginCreator sScanCreator;
    static nvinfer1::IPluginCreatorInterface* const kCREATORS[] = {&sScanCreator};
    nbCreators = 1;
    return kCREATORS;
}

extern "C" AVS_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    avs::setScanPluginLoggerFinder(finder);
}
