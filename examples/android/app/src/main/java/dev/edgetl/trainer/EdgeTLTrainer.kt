package dev.edgetl.trainer

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtTrainingSession
import java.io.File
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * Trains an `edgetl export --format onnx` artifact set with ONNX Runtime's training API.
 *
 * The directory holds training_model.onnx, eval_model.onnx, optimizer_model.onnx and checkpoint, as the
 * Python runner (ort_runner.py) uses them; [resolution] and [learningRate] come from manifest.json.
 */
class EdgeTLTrainer(dir: File, private val resolution: Int, learningRate: Float) : AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtTrainingSession = env.createTrainingSession(
        File(dir, "checkpoint").path,
        File(dir, "training_model.onnx").path,
        File(dir, "eval_model.onnx").path,
        File(dir, "optimizer_model.onnx").path,
    )

    init {
        session.setLearningRate(learningRate)
    }

    /** One optimizer step on a batch: images NCHW float32, preprocessed as manifest.json says. Returns the loss. */
    fun step(images: FloatArray, labels: LongArray): Float {
        val batch = labels.size.toLong()
        val shape = longArrayOf(batch, 3, resolution.toLong(), resolution.toLong())
        OnnxTensor.createTensor(env, FloatBuffer.wrap(images), shape).use { x ->
            OnnxTensor.createTensor(env, LongBuffer.wrap(labels), longArrayOf(batch)).use { y ->
                session.trainStep(mapOf("input" to x, "labels" to y)).use { out ->
                    val loss = (out[0] as OnnxTensor).floatBuffer.get(0)
                    session.optimizerStep()
                    session.lazyResetGrad()
                    return loss
                }
            }
        }
    }

    /** The trained parameters as one flat buffer (the order of manifest.json's "trainable"). */
    fun trainedParameters(): FloatArray {
        session.getParameters(true).use { params -> // trainable only
            val buffer = params.floatBuffer
            return FloatArray(buffer.remaining()).also { buffer.get(it) }
        }
    }

    /** An inference model with the trained weights, for ONNX Runtime Mobile's plain InferenceSession. */
    fun exportInference(path: File) = session.exportModelForInference(path.path, arrayOf("logits"))

    override fun close() {
        session.close()
    }
}
